/* sched_trace._speedups.encode_frame: an events frame's payload, written in C.
 *
 * The exporter thread's work, under the scheduler's GIL, was a Python loop over the
 * events (a tuple copy each, a look for ``requests``) and then the pickler's generic
 * walk (a memo entry for every tuple and dict). This writes the same pickle (protocol 5)
 * of ``(contexts, classes, fields)`` that codec.EventEncoder's Python form writes, so
 * the receiving side (codec.decode_events: ``pickle.loads``) is the same for both:
 *
 *   - each event's fields as a plain tuple, straight from the event (no copy), or from
 *     a record of an exporter's ring (a batch taken as it is: ``_ring.c``), the same bytes
 *     without the event made;
 *   - its class, and a RankInfo, once per frame (the Python form's ``rank_args`` gives
 *     what a RankInfo is rebuilt from), then by memo reference, as the pickler does;
 *   - strings once per frame, then by memo reference (by identity: the names of a
 *     frame's events are the same few objects; each held until the frame is written);
 *   - a ``requests`` list or tuple as its requests' ids, read from the Python form's
 *     ContextCache table as its ``context`` would (a request seen before, its re-read at
 *     a power-of-two sighting where it is a plain object with no context anywhere);
 *     that ``context`` itself for the rest (a first sighting), ``_send`` for a context
 *     not sent yet, ``request_ids`` for ``requests`` of another kind, and a request
 *     event's id through ``context_of_request`` unless ``sent`` holds it: the only
 *     Python calls left, the same ones the Python form makes. A batch of the very
 *     requests of the frame's batch before it takes that one's ids (a decode batch is
 *     the same from step to step): its requests are read once per frame, not per step.
 *
 * Only plain data is written here: None, bool, int (64 bits), float, str, bytes, and
 * tuples, lists and dicts of them, ``NO_ATTRS`` as an empty dict. Anything else (an
 * exception, an enum, a user object, a larger int, a str with lone surrogates) makes
 * it answer None, and the Python form encodes the frame with what the callbacks did so
 * far (the contexts found stay in ``contexts``; ``sent`` knows them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>
#include <errno.h>
#include <sys/uio.h>

#define NOT_PLAIN 1
#define MAX_DEPTH 32
#define MEMO_SLOTS 2048 /* the table's largest size (a power of two), filled to three quarters at most */
#define MEMO_FIRST 64   /* its first size: a frame's few names; doubled as it fills */
#define MAX_RANKS 64

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

typedef struct {
    PyObject *key; /* a strong reference while the frame is written: a live list an attribute
                    * names may drop a string during a callback, and a new string take its address */
    Py_ssize_t index;
} MemoSlot;

typedef struct {
    Buffer *out;
    int memo_on;
    Py_ssize_t memo_used, next_index;
    MemoSlot *memo;  /* NULL until the first entry; sized as the frame needs: the exporter thread */
    size_t memo_size; /* meets it cold, and zeroing and sweeping all of MEMO_SLOTS cost a small frame more than its events */
    PyObject *ranks[MAX_RANKS];
    Py_ssize_t rank_index[MAX_RANKS];
    int n_ranks;
    Py_ssize_t global_index[4]; /* memo index of each event class and RankInfo; -1: not written yet */
    PyObject *kinds[4];         /* StageEvent, BatchEvent, RequestEvent, RankInfo (borrowed) */
    PyObject *no_attrs, *rank_args;
    /* the contexts this frame sends, found on the way, and the Python form's callbacks */
    PyObject *contexts, *context_of_request, *request_ids;
    /* a batch's requests: the Python form's ContextCache (its table of known requests and its
     * ``context``), the trace context table, ``sent``, ``_send`` and the Mapping kinds */
    PyObject *known, *context, *table, *sent, *send, *mapping_kinds;
    /* the frame's last batch of requests read and their ids (strong references, so the same
     * addresses are the same requests): a batch of the very same ones takes those ids */
    PyObject *last_items, *last_ids;
} Writer;

static PyObject *str_requests, *str_module, *str_qualname, *str_rid, *context_names[3];

/* _ring.c: a batch taken out of an exporter's Ring (its records read here, no event made) */
Py_ssize_t taken_size(PyObject *batch);
void taken_item(PyObject *batch, Py_ssize_t i, PyObject **object, PyObject **probe, PyObject *const **refs,
                long long *start_ns, long long *end_ns, int *ended);
/* _ring.c: a record's id held as a C integer (its pointer tagged), and that integer */
int ring_tagged(PyObject *ref);
long long ring_untag(PyObject *ref);
/* _speedups.c: what a record takes from its probe */
int span_probe(PyObject *probe, PyObject **event_type, PyObject **name, PyObject **level);

/* An event's fields as write_event reads them: an event's own (a tuple), or a ring's
 * record's, whose times (fields 2 and 3) are C integers, ``start_ns`` and ``end_ns`` (the
 * end None unless ``ended``). */
typedef struct {
    PyObject *const *items; /* n of them; for a record, items[2] and items[3] are not read, and
                             * an id may be a tagged C integer (ring_tagged) */
    Py_ssize_t n;
    int record, ended;
    long long start_ns, end_ns;
} Fields;

static int
grow(Buffer *b, Py_ssize_t need)
{
    Py_ssize_t capacity = b->capacity ? b->capacity : 4096;
    while (capacity < b->size + need)
        capacity *= 2;
    char *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static inline int
put(Buffer *b, const char *bytes, Py_ssize_t n)
{
    if (b->size + n > b->capacity && grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->size, bytes, n);
    b->size += n;
    return 0;
}

static inline int
put1(Buffer *b, char op)
{
    if (b->size + 1 > b->capacity && grow(b, 1) < 0)
        return -1;
    b->data[b->size++] = op;
    return 0;
}

static inline int
put_sized(Buffer *b, char short_op, char long_op, const char *bytes, Py_ssize_t n)
{
    char head[5];
    if (n < 256) {
        head[0] = short_op;
        head[1] = (char)n;
        if (put(b, head, 2) < 0)
            return -1;
    }
    else {
        if (n > 0xffffffffLL) {
            PyErr_SetString(PyExc_OverflowError, "a string over 4 GiB in an event");
            return -1;
        }
        uint32_t size = (uint32_t)n;
        head[0] = long_op;
        for (int i = 0; i < 4; i++)
            head[1 + i] = (char)(size >> (8 * i));
        if (put(b, head, 5) < 0)
            return -1;
    }
    return put(b, bytes, n);
}

/* --- the memo: objects written once, then fetched by index -------------------- */

static inline size_t
slot_of(PyObject *key, size_t size)
{
    return (size_t)(((uintptr_t)key >> 4) * 0x9E3779B97F4A7C15ULL) & (size - 1);
}

static Py_ssize_t
memo_get(Writer *w, PyObject *key)
{
    if (w->memo == NULL)
        return -1;
    for (size_t slot = slot_of(key, w->memo_size);; slot = (slot + 1) & (w->memo_size - 1)) {
        if (w->memo[slot].key == key)
            return w->memo[slot].index;
        if (w->memo[slot].key == NULL)
            return -1;
    }
}

/* A table of ``size`` slots holding the entries (references moved, not taken), or -1. */
static int
memo_resize(Writer *w, size_t size)
{
    MemoSlot *table = PyMem_Calloc(size, sizeof(MemoSlot));
    if (table == NULL)
        return PyErr_NoMemory(), -1;
    for (size_t old = 0; w->memo != NULL && old < w->memo_size; old++) {
        if (w->memo[old].key == NULL)
            continue;
        size_t slot = slot_of(w->memo[old].key, size);
        while (table[slot].key != NULL)
            slot = (slot + 1) & (size - 1);
        table[slot] = w->memo[old];
    }
    PyMem_Free(w->memo);
    w->memo = table;
    w->memo_size = size;
    return 0;
}

/* After the object is on the unpickler's stack: MEMOIZE it, if the table has room. */
static int
memo_put(Writer *w, PyObject *key)
{
    if (w->memo_used >= MEMO_SLOTS * 3 / 4)
        return 0;
    if ((size_t)(w->memo_used + 1) > w->memo_size * 3 / 4 &&
        memo_resize(w, w->memo == NULL ? MEMO_FIRST : w->memo_size * 2) < 0)
        return -1;
    size_t slot = slot_of(key, w->memo_size);
    while (w->memo[slot].key != NULL)
        slot = (slot + 1) & (w->memo_size - 1);
    w->memo[slot].key = Py_NewRef(key);
    w->memo[slot].index = w->next_index++;
    w->memo_used++;
    return put1(w->out, '\x94'); /* MEMOIZE */
}

static int
put_get(Buffer *b, Py_ssize_t index)
{
    char op[5];
    if (index < 256) {
        op[0] = 'h'; /* BINGET */
        op[1] = (char)index;
        return put(b, op, 2);
    }
    op[0] = 'j'; /* LONG_BINGET */
    for (int i = 0; i < 4; i++)
        op[1 + i] = (char)((uint32_t)index >> (8 * i));
    return put(b, op, 5);
}

/* --- values ------------------------------------------------------------------- */

static int write_ll(Writer *w, long long x);

static int
write_long(Writer *w, PyObject *value)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow)
        return NOT_PLAIN;
    if (x == -1 && PyErr_Occurred())
        return -1;
    return write_ll(w, x);
}

/* An int as the pickler writes it (the opcodes of write_long's value). */
static int
write_ll(Writer *w, long long x)
{
    char op[10];
    if (x >= 0 && x < 256) {
        op[0] = 'K'; /* BININT1 */
        op[1] = (char)x;
        return put(w->out, op, 2);
    }
    if (x >= 0 && x < 65536) {
        op[0] = 'M'; /* BININT2 */
        op[1] = (char)(x & 0xff);
        op[2] = (char)(x >> 8);
        return put(w->out, op, 3);
    }
    if (x >= INT32_MIN && x <= INT32_MAX) {
        op[0] = 'J'; /* BININT */
        uint32_t bits = (uint32_t)(int32_t)x;
        for (int i = 0; i < 4; i++)
            op[1 + i] = (char)(bits >> (8 * i));
        return put(w->out, op, 5);
    }
    /* LONG1: the fewest little-endian two's complement bytes */
    uint64_t bits = (uint64_t)x;
    unsigned char bytes[8];
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)(bits >> (8 * i));
    int n = 8;
    while (n > 1 && ((bytes[n - 1] == 0x00 && !(bytes[n - 2] & 0x80)) ||
                     (bytes[n - 1] == 0xff && (bytes[n - 2] & 0x80))))
        n--;
    op[0] = '\x8a';
    op[1] = (char)n;
    memcpy(op + 2, bytes, n);
    return put(w->out, op, 2 + n);
}

static int
write_float(Writer *w, PyObject *value)
{
    double x = PyFloat_AS_DOUBLE(value);
    uint64_t bits;
    memcpy(&bits, &x, 8);
    char op[9];
    op[0] = 'G'; /* BINFLOAT: big-endian IEEE 754 */
    for (int i = 0; i < 8; i++)
        op[1 + i] = (char)(bits >> (8 * (7 - i)));
    return put(w->out, op, 9);
}

static int
write_str(Writer *w, PyObject *value)
{
    if (w->memo_on) {
        Py_ssize_t index = memo_get(w, value);
        if (index >= 0)
            return put_get(w->out, index);
    }
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(value, &n);
    if (text == NULL) { /* lone surrogates: the pickler writes them its own way */
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear();
        return NOT_PLAIN;
    }
    if (put_sized(w->out, '\x8c', 'X', text, n) < 0) /* SHORT_BINUNICODE, BINUNICODE */
        return -1;
    return w->memo_on ? memo_put(w, value) : 0;
}

static int write_value(Writer *w, PyObject *value, int depth);

static int
write_items(Writer *w, PyObject *const *items, Py_ssize_t n, int depth)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        int done = write_value(w, items[i], depth);
        if (done)
            return done;
    }
    return 0;
}

static int
write_tuple(Writer *w, PyObject *value, int depth)
{
    Py_ssize_t n = PyTuple_GET_SIZE(value);
    if (n == 0)
        return put1(w->out, ')'); /* EMPTY_TUPLE */
    if (put1(w->out, '(') < 0)     /* MARK */
        return -1;
    int done = write_items(w, &PyTuple_GET_ITEM(value, 0), n, depth);
    return done ? done : put1(w->out, 't'); /* TUPLE */
}

static int
write_list(Writer *w, PyObject *value, int depth)
{
    if (put1(w->out, ']') < 0) /* EMPTY_LIST */
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(value);
    if (n == 0)
        return 0;
    if (put1(w->out, '(') < 0)
        return -1;
    /* Nothing written here runs Python code, so the list cannot change under us. */
    int done = write_items(w, &PyList_GET_ITEM(value, 0), n, depth);
    return done ? done : put1(w->out, 'e'); /* APPENDS */
}

static int
write_dict(Writer *w, PyObject *value, int depth)
{
    if (put1(w->out, '}') < 0) /* EMPTY_DICT */
        return -1;
    if (PyDict_GET_SIZE(value) == 0)
        return 0;
    if (put1(w->out, '(') < 0)
        return -1;
    Py_ssize_t position = 0;
    PyObject *key, *item;
    while (PyDict_Next(value, &position, &key, &item)) {
        int done = write_value(w, key, depth);
        if (!done)
            done = write_value(w, item, depth);
        if (done)
            return done;
    }
    return put1(w->out, 'u'); /* SETITEMS */
}

/* 0 written, NOT_PLAIN (nothing to rely on was written), -1 an exception. */
static int
write_value(Writer *w, PyObject *value, int depth)
{
    PyTypeObject *type = Py_TYPE(value);
    if (value == Py_None)
        return put1(w->out, 'N');
    if (type == &PyUnicode_Type)
        return write_str(w, value);
    if (type == &PyLong_Type)
        return write_long(w, value);
    if (type == &PyBool_Type)
        return put1(w->out, value == Py_True ? '\x88' : '\x89'); /* NEWTRUE, NEWFALSE */
    if (type == &PyFloat_Type)
        return write_float(w, value);
    if (depth >= MAX_DEPTH) /* deeper (or a container holding itself): the pickler's memo copes */
        return NOT_PLAIN;
    if (type == &PyTuple_Type)
        return write_tuple(w, value, depth + 1);
    if (type == &PyDict_Type)
        return write_dict(w, value, depth + 1);
    if (type == &PyList_Type)
        return write_list(w, value, depth + 1);
    if (type == &PyBytes_Type)
        return put_sized(w->out, 'C', 'B', PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)); /* SHORT_BINBYTES, BINBYTES */
    if (value == w->no_attrs)
        return put1(w->out, '}');
    return NOT_PLAIN;
}

/* --- classes and ranks ---------------------------------------------------------- */

static int
write_global(Writer *w, int kind)
{
    if (w->global_index[kind] >= 0)
        return put_get(w->out, w->global_index[kind]);
    PyObject *module = PyObject_GetAttr(w->kinds[kind], str_module);
    PyObject *name = module ? PyObject_GetAttr(w->kinds[kind], str_qualname) : NULL;
    int done = -1;
    if (name != NULL && PyUnicode_CheckExact(module) && PyUnicode_CheckExact(name)) {
        int saved = w->memo_on;
        w->memo_on = 0; /* both are fetched by the global's own memo entry from here on */
        done = write_str(w, module);
        if (!done)
            done = write_str(w, name);
        w->memo_on = saved;
        if (!done && (done = put1(w->out, '\x93')) == 0) { /* STACK_GLOBAL */
            w->global_index[kind] = w->next_index++;
            done = put1(w->out, '\x94');
        }
    }
    else if (name != NULL) {
        done = NOT_PLAIN;
    }
    Py_XDECREF(module);
    Py_XDECREF(name);
    return done;
}

/* A RankInfo: RankInfo(*rank_args(rank)), REDUCE, once per frame. */
static int
write_rank(Writer *w, PyObject *rank)
{
    for (int i = 0; i < w->n_ranks; i++)
        if (w->ranks[i] == rank)
            return put_get(w->out, w->rank_index[i]);
    PyObject *args = PyObject_CallOneArg(w->rank_args, rank);
    if (args == NULL)
        return -1;
    int done = PyTuple_CheckExact(args) ? 0 : NOT_PLAIN;
    if (!done && !(done = write_global(w, 3)) && !(done = write_value(w, args, 1)))
        done = put1(w->out, 'R'); /* REDUCE */
    Py_DECREF(args);
    if (done)
        return done;
    if (w->n_ranks < MAX_RANKS) {
        w->ranks[w->n_ranks] = Py_NewRef(rank);
        w->rank_index[w->n_ranks++] = w->next_index++;
        return put1(w->out, '\x94');
    }
    return 0;
}

/* --- a batch's requests: their ids, the contexts not sent yet ------------------------ */

static PyObject *
referent(PyObject *reference) /* a new reference, or NULL (gone, or not a weak reference) */
{
    if (!PyWeakref_CheckRef(reference))
        return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *object;
    if (PyWeakref_GetRef(reference, &object) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return object;
#else
    PyObject *object = PyWeakref_GetObject(reference);
    return object == Py_None ? NULL : Py_NewRef(object);
#endif
}

static int
optional_attr(PyObject *object, PyObject *name, PyObject **value) /* 1 found, 0 absent, -1 raised */
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(object, name, value);
#else
    return _PyObject_LookupAttr(object, name, value);
#endif
}

/* contexts.request_context(request) for a plain object (not a Mapping) whose ``rid`` is a str
 * and which has none of the places a context could be (``traceparent``, ``trace_context``,
 * ``external_trace_header``: absent or None): ``(rid, table.get(rid))``, a new reference.
 * NULL with no exception: anything else (the Python form reads it); NULL with one: a
 * BaseException that is no Exception (KeyboardInterrupt), which the Python form lets through. */
static PyObject *
plain_request_context(Writer *w, PyObject *request)
{
    PyObject *mapping = PyDict_GetItemWithError(w->mapping_kinds, (PyObject *)Py_TYPE(request));
    if (mapping != Py_False) /* a Mapping, or a type the Python form has not met yet */
        return NULL;             /* (a lookup by type raises nothing: types hash by identity) */
    PyObject *rid = NULL, *value = NULL;
    if (optional_attr(request, str_rid, &rid) <= 0 || !PyUnicode_CheckExact(rid))
        goto python;
    for (int i = 0; i < 3; i++) {
        if (optional_attr(request, context_names[i], &value) < 0)
            goto python;
        if (value != NULL && value != Py_None)
            goto python;
        Py_CLEAR(value);
    }
    PyObject *traceparent = PyDict_GET_SIZE(w->table) ? PyDict_GetItemWithError(w->table, rid) : NULL;
    if (traceparent == NULL && PyErr_Occurred())
        goto python;
    PyObject *context = PyTuple_Pack(2, rid, traceparent ? traceparent : Py_None);
    Py_DECREF(rid);
    return context;
python:
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception))
        PyErr_Clear();
    Py_XDECREF(rid);
    Py_XDECREF(value);
    return NULL;
}

/* ContextCache.context(request) for a request its table ``known`` entry remembers
 * ([weak reference, context, sightings], held by the caller): a new reference to
 * (rid, tp); NULL with an exception; NULL without one where the Python form decides. */
static PyObject *
known_context(Writer *w, PyObject *request, PyObject *known)
{
    PyObject *object = referent(PyList_GET_ITEM(known, 0));
    Py_XDECREF(object); /* compared by identity only */
    PyObject *context = PyList_GET_ITEM(known, 1), *sightings = PyList_GET_ITEM(known, 2);
    if (object != request || !PyTuple_CheckExact(context) || PyTuple_GET_SIZE(context) != 2 ||
        !PyLong_CheckExact(sightings))
        return NULL;
    if (PyTuple_GET_ITEM(context, 1) != Py_None)
        return Py_NewRef(context);
    long long seen = PyLong_AsLongLong(sightings);
    if (seen < 0 || seen >= LLONG_MAX / 2) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *fresh = NULL;
    Py_INCREF(context); /* reading the request may run its code: hold what we read */
    if (!((seen + 1) & seen) && (fresh = plain_request_context(w, request)) == NULL) {
        Py_DECREF(context); /* a power of two, and more to read than C reads: the Python form */
        return NULL;
    }
    PyObject *count = PyLong_FromLongLong(seen + 1), *result = NULL;
    if (count == NULL || PyList_SetItem(known, 2, count) < 0) /* steals count */
        goto done;
    if (fresh != NULL) { /* read again, still no context: as the Python form, the table's */
        result = Py_NewRef(fresh);
        goto done;
    }
    /* not a power of two: only the table is read again */
    PyObject *rid = PyTuple_GET_ITEM(context, 0), *traceparent = NULL;
    if (PyDict_GET_SIZE(w->table) && (traceparent = PyDict_GetItemWithError(w->table, rid)) == NULL &&
        PyErr_Occurred())
        goto done;
    result = traceparent ? PyTuple_Pack(2, rid, traceparent) : Py_NewRef(context);
done:
    Py_XDECREF(fresh);
    Py_DECREF(context);
    return result;
}

/* ContextCache.context(request): from its table where that answers without reading the
 * request (its common case: a request seen before), else that method itself. A new
 * reference to (rid, tp). */
static PyObject *
context_of(Writer *w, PyObject *request)
{
    PyObject *key = PyLong_FromVoidPtr(request);
    if (key == NULL)
        return NULL;
    PyObject *known = PyDict_GetItemWithError(w->known, key);
    Py_DECREF(key);
    if (known == NULL && PyErr_Occurred())
        return NULL;
    if (known != NULL && PyList_CheckExact(known) && PyList_GET_SIZE(known) == 3) {
        Py_INCREF(known);
        PyObject *context = known_context(w, request, known);
        Py_DECREF(known);
        if (context != NULL || PyErr_Occurred())
            return context;
    }
    return PyObject_CallOneArg(w->context, request); /* counts the sighting itself */
}

/* A list or tuple of the same requests, in the same order, as ``last`` (which holds them:
 * identity is enough). Compared in place: no reference taken, so the requests themselves
 * (gone cold since their step) are not touched. */
static int
same_requests(PyObject *requests, PyObject *last)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(requests);
    if (last == NULL || PyTuple_GET_SIZE(last) != n)
        return 0;
    PyObject **items = PySequence_Fast_ITEMS(requests);
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] != PyTuple_GET_ITEM(last, i))
            return 0;
    return 1;
}

/* ``{**attrs, "requests": ids}`` (a new reference), or NULL. A batch of the very requests
 * the frame's last batch had (a decode batch from one step to the next) takes its ids:
 * they were read, and their contexts sent, moments ago (EventEncoder._request_ids too). */
static PyObject *
with_request_ids(Writer *w, PyObject *attrs, PyObject *requests)
{
    PyObject *items = NULL, *ids = NULL, *result = NULL;
    if (same_requests(requests, w->last_items)) {
        ids = Py_NewRef(w->last_ids);
        goto found;
    }
    if ((items = PySequence_Tuple(requests)) == NULL) /* read once: the scheduler may change its list */
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    if ((ids = PyTuple_New(n)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *context = context_of(w, PyTuple_GET_ITEM(items, i));
        if (context == NULL)
            goto done;
        if (!PyTuple_CheckExact(context) || PyTuple_GET_SIZE(context) != 2) {
            Py_DECREF(context);
            PyErr_SetString(PyExc_TypeError, "a request's context is (rid, traceparent)");
            goto done;
        }
        PyObject *rid = PyTuple_GET_ITEM(context, 0), *traceparent = PyTuple_GET_ITEM(context, 1);
        PyTuple_SET_ITEM(ids, i, Py_NewRef(rid));
        if (traceparent != Py_None) {
            int known = PyDict_Contains(w->sent, rid);
            PyObject *none = known ? NULL : PyObject_CallFunctionObjArgs(w->send, rid, traceparent, w->contexts, NULL);
            Py_XDECREF(none);
            if (known < 0 || (!known && none == NULL)) {
                Py_DECREF(context);
                goto done;
            }
        }
        Py_DECREF(context);
    }
    Py_XSETREF(w->last_items, Py_NewRef(items));
    Py_XSETREF(w->last_ids, Py_NewRef(ids));
found:
    result = PyDict_Copy(attrs);
    if (result != NULL && PyDict_SetItem(result, str_requests, ids) < 0)
        Py_CLEAR(result);
done:
    Py_XDECREF(items);
    Py_XDECREF(ids);
    return result;
}

/* --- events ----------------------------------------------------------------------- */

static int
kind_of_type(Writer *w, PyObject *type)
{
    for (int kind = 0; kind < 3; kind++)
        if (type == w->kinds[kind])
            return kind;
    return -1;
}

static int
kind_of(Writer *w, PyObject *event)
{
    return kind_of_type(w, (PyObject *)Py_TYPE(event));
}

static int
write_event(Writer *w, const Fields *fields, int kind)
{
    Py_ssize_t n = fields->n;
    if (put1(w->out, '(') < 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (fields->record && (i == 2 || i == 3)) { /* a record's times, C integers */
            int done = i == 2 ? write_ll(w, fields->start_ns)
                       : fields->ended ? write_ll(w, fields->end_ns) : put1(w->out, 'N'); /* NONE */
            if (done)
                return done;
            continue;
        }
        PyObject *field = fields->items[i];
        int done;
        if (fields->record && ring_tagged(field)) { /* a record's id, a C integer */
            if ((done = write_ll(w, ring_untag(field))))
                return done;
            continue;
        }
        if ((PyObject *)Py_TYPE(field) == w->kinds[3]) {
            done = write_rank(w, field);
        }
        else if (kind != 2 && i == 8 && PyDict_CheckExact(field) && PyDict_GET_SIZE(field)) {
            PyObject *requests = PyDict_GetItemWithError(field, str_requests);
            if (requests == NULL && PyErr_Occurred())
                return -1;
            if (requests != NULL) { /* the ids instead of the objects; their contexts to send */
                PyObject *attrs;
                Py_INCREF(requests);
                if (PyList_CheckExact(requests) || PyTuple_CheckExact(requests))
                    attrs = with_request_ids(w, field, requests);
                else /* None, one request, another iterable: the Python form's rules */
                    attrs = PyObject_CallFunctionObjArgs(w->request_ids, field, w->contexts, NULL);
                Py_DECREF(requests);
                if (attrs == NULL)
                    return -1;
                done = write_value(w, attrs, 1);
                Py_DECREF(attrs);
            }
            else {
                done = write_value(w, field, 0);
            }
        }
        else {
            done = write_value(w, field, 0);
            if (!done && kind == 2 && i == 2) { /* a request event's id: its context, once */
                int known = PyDict_Contains(w->sent, field);
                if (known < 0)
                    return -1;
                if (!known) {
                    PyObject *none = PyObject_CallFunctionObjArgs(w->context_of_request, field, w->contexts, NULL);
                    if (none == NULL)
                        return -1;
                    Py_DECREF(none);
                }
            }
        }
        if (done)
            return done;
    }
    return put1(w->out, 't');
}

/* Item ``i`` of a Taken batch: its kind (-1: not an event class); unless ``fields`` is NULL
 * (the kind alone), its fields in ``fields`` (``scratch`` holds a record's 12) and the
 * object to hold while it is written (borrowed; a record's probe). */
static int
taken_fields(Writer *w, PyObject *batch, Py_ssize_t i, Fields *fields, PyObject **scratch, PyObject **held)
{
    PyObject *object, *probe, *type, *name, *level;
    PyObject *const *refs;
    Fields times; /* where taken_item writes a record's times when only the kind is asked */
    Fields *into = fields != NULL ? fields : &times;
    taken_item(batch, i, &object, &probe, &refs, &into->start_ns, &into->end_ns, &into->ended);
    if (object != NULL) {
        if (!PyTuple_Check(object))
            return -1;
        if (fields == NULL)
            return kind_of(w, object);
        *held = object;
        fields->items = &PyTuple_GET_ITEM(object, 0);
        fields->n = PyTuple_GET_SIZE(object);
        fields->record = 0;
        return kind_of(w, object);
    }
    if (span_probe(probe, &type, &name, &level) < 0)
        return -1;
    if (fields == NULL)
        return kind_of_type(w, type);
    *held = probe;
    scratch[0] = name;
    scratch[1] = level;
    scratch[2] = scratch[3] = Py_None; /* not read: the times are the record's */
    for (int j = 0; j < 8; j++)
        scratch[4 + j] = refs[j];
    fields->items = scratch;
    fields->n = 12;
    fields->record = 1;
    return kind_of_type(w, type);
}

/* The events of a list, or of a batch taken from a ring (``taken`` its size, else -1). */
static int
write_frame(Writer *w, PyObject *events, Py_ssize_t taken, Buffer *head)
{
    Py_ssize_t n = taken >= 0 ? taken : PyList_GET_SIZE(events);
    PyObject *scratch[12], *held;
    Fields fields;
    int done;
    /* classes */
    if (put1(w->out, ']') < 0 || (n && put1(w->out, '(') < 0))
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int kind = taken >= 0 ? taken_fields(w, events, i, NULL, NULL, NULL)
                              : kind_of(w, PyList_GET_ITEM(events, i));
        if (kind < 0)
            return NOT_PLAIN;
        if ((done = write_global(w, kind)))
            return done;
    }
    if ((n && put1(w->out, 'e') < 0) || put1(w->out, ']') < 0 || (n && put1(w->out, '(') < 0))
        return -1;
    /* fields; a callback may change the list: read it by index, with a reference held (a
     * Taken batch is the exporter thread's own: nothing else changes it) */
    for (Py_ssize_t i = 0; i < n && (taken >= 0 || i < PyList_GET_SIZE(events)); i++) {
        int kind;
        if (taken >= 0)
            kind = taken_fields(w, events, i, &fields, scratch, &held);
        else {
            held = PyList_GET_ITEM(events, i);
            kind = kind_of(w, held);
            if (kind >= 0) {
                fields.items = &PyTuple_GET_ITEM(held, 0);
                fields.n = PyTuple_GET_SIZE(held);
                fields.record = 0;
            }
        }
        if (kind < 0)
            return NOT_PLAIN;
        Py_INCREF(held);
        done = write_event(w, &fields, kind);
        Py_DECREF(held);
        if (done)
            return done;
    }
    if ((n && put1(w->out, 'e') < 0) || put(w->out, "\x87.", 2) < 0) /* TUPLE3, STOP */
        return -1;
    /* contexts, found on the way, go first: written apart, without memo entries */
    if (!PyList_CheckExact(w->contexts))
        return NOT_PLAIN;
    w->out = head;
    w->memo_on = 0;
    if (put(head, "\x80\x05", 2) < 0) /* PROTO 5 */
        return -1;
    return write_value(w, w->contexts, 0);
}

static PyObject *
encode_frame(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"events", "contexts", "sent", "context_of_request", "request_ids", "rank_args",
                               "kinds", "no_attrs", "cache", NULL};
    PyObject *events, *contexts, *sent, *context_of_request, *request_ids, *rank_args, *kinds, *no_attrs, *cache;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!O!OOOO!OO!:encode_frame", keywords, &events,
                                     &PyList_Type, &contexts, &PyDict_Type, &sent, &context_of_request, &request_ids,
                                     &rank_args, &PyTuple_Type, &kinds, &no_attrs, &PyTuple_Type, &cache))
        return NULL;
    if (PyTuple_GET_SIZE(cache) != 5 || !PyDict_Check(PyTuple_GET_ITEM(cache, 0)) ||
        !PyDict_Check(PyTuple_GET_ITEM(cache, 2)) || !PyDict_Check(PyTuple_GET_ITEM(cache, 4))) {
        PyErr_SetString(PyExc_ValueError,
                        "cache: (known requests, context, trace context table, send, mapping kinds)");
        return NULL;
    }
    Py_ssize_t taken = taken_size(events);
    if (taken < 0 && !PyList_Check(events)) {
        PyErr_SetString(PyExc_TypeError, "events: a list, or a batch taken from a ring");
        return NULL;
    }
    if (PyTuple_GET_SIZE(kinds) != 4) {
        PyErr_SetString(PyExc_ValueError, "kinds: (StageEvent, BatchEvent, RequestEvent, RankInfo)");
        return NULL;
    }
    Writer *w = PyMem_Calloc(1, sizeof(Writer));
    if (w == NULL)
        return PyErr_NoMemory();
    Buffer body = {NULL, 0, 0}, head = {NULL, 0, 0};
    PyObject *result = NULL;
    w->out = &body;
    /* room for the events at once (about 40 to 60 bytes each in a decode batch): a buffer
     * grown by doubling copies what it holds at each step, into memory as cold as the rest */
    if (taken > 0 && grow(&body, 64 * (taken < (1 << 16) ? taken : (1 << 16))) < 0) {
        PyMem_Free(w);
        return NULL;
    }
    w->memo_on = 1;
    for (int i = 0; i < 4; i++) {
        w->kinds[i] = PyTuple_GET_ITEM(kinds, i);
        w->global_index[i] = -1;
    }
    w->no_attrs = no_attrs;
    w->rank_args = rank_args;
    w->contexts = contexts;
    w->context_of_request = context_of_request;
    w->request_ids = request_ids;
    w->sent = sent;
    w->known = PyTuple_GET_ITEM(cache, 0);
    w->context = PyTuple_GET_ITEM(cache, 1);
    w->table = PyTuple_GET_ITEM(cache, 2);
    w->send = PyTuple_GET_ITEM(cache, 3);
    w->mapping_kinds = PyTuple_GET_ITEM(cache, 4);
    int written = write_frame(w, events, taken, &head);
    if (written < 0)
        goto done;
    if (written == NOT_PLAIN) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, head.size + body.size);
    if (result != NULL) {
        memcpy(PyBytes_AS_STRING(result), head.data, head.size);
        memcpy(PyBytes_AS_STRING(result) + head.size, body.data, body.size);
    }
done:
    for (size_t slot = 0; w->memo != NULL && slot < w->memo_size; slot++)
        Py_XDECREF(w->memo[slot].key);
    PyMem_Free(w->memo);
    for (int i = 0; i < w->n_ranks; i++)
        Py_DECREF(w->ranks[i]);
    Py_XDECREF(w->last_items);
    Py_XDECREF(w->last_ids);
    PyMem_Free(body.data);
    PyMem_Free(head.data);
    PyMem_Free(w);
    return result;
}

/* write_held(fd, head, body): as much of head then body as a non-blocking descriptor takes
 * now, in one writev, without letting go of the GIL: the bytes written, 0 where it would
 * block (the caller waits for room with the GIL let go). The exporter thread's frame:
 * os.write lets go of the GIL for the call, and the scheduler thread, which was made to
 * hand the GIL over for the frame's encoding, takes it back, so the exporter thread has
 * to take it from the scheduler a second time (a forced switch, up to the switch
 * interval) only to note what was written. A pipe with room takes a frame in a few
 * microseconds. */
static PyObject *
write_held(PyObject *module, PyObject *args)
{
    (void)module;
    int fd;
    Py_buffer head, body;
    if (!PyArg_ParseTuple(args, "iy*y*:write_held", &fd, &head, &body))
        return NULL;
    struct iovec parts[2] = {{head.buf, (size_t)head.len}, {body.buf, (size_t)body.len}};
    ssize_t written = writev(fd, parts, 2);
    int error = errno;
    PyBuffer_Release(&head);
    PyBuffer_Release(&body);
    if (written >= 0)
        return PyLong_FromSsize_t(written);
    if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR)
        return PyLong_FromLong(0); /* the caller's blocking path waits, and handles a signal */
    errno = error;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyMethodDef encode_methods[] = {
    {"encode_frame", (PyCFunction)(void (*)(void))encode_frame, METH_VARARGS | METH_KEYWORDS,
     "An events frame's payload, the C form of codec.EventEncoder.encode; None where a value is not plain data."},
    {"write_held", write_held, METH_VARARGS,
     "write_held(fd, head, body): bytes of head + body written in one writev without letting go of the GIL; "
     "0 where a non-blocking descriptor would block."},
    {NULL},
};

int
encode_init(PyObject *module)
{
    if ((str_requests = PyUnicode_InternFromString("requests")) == NULL ||
        (str_module = PyUnicode_InternFromString("__module__")) == NULL ||
        (str_qualname = PyUnicode_InternFromString("__qualname__")) == NULL ||
        (str_rid = PyUnicode_InternFromString("rid")) == NULL ||
        (context_names[0] = PyUnicode_InternFromString("traceparent")) == NULL ||
        (context_names[1] = PyUnicode_InternFromString("trace_context")) == NULL ||
        (context_names[2] = PyUnicode_InternFromString("external_trace_header")) == NULL)
        return -1;
    return PyModule_AddFunctions(module, encode_methods);
}
