/* sched_trace._speedups: a probe's traced call in C.
 *
 * The same steps as _hotpath.TEMPLATE (a stage or batch probe), KEPT_TEMPLATE (a keep_if
 * probe: the call, the decision, then the events) and REQUEST_TEMPLATE (a request probe:
 * its phase at call entry, then the call), which stay the reference and the fallback
 * (no compiler, another interpreter, SCHED_TRACE_PURE_PYTHON=1): compare the level,
 * read the thread's context cell, take the ids, read the extractors, deliver the start
 * event, run the call, deliver the end event. What a Python frame costs per call
 * (about half of an enabled span's instructions) is what this saves; every object it
 * touches is the one the Python template touches, read through the same helpers
 * (tests/core/conftest.py runs every test in tests/core on both forms), but for the event
 * itself where only exporters' buffers in C listen: it is written into them as a record
 * (_ring.c), and made, the same tuple, only if something reads it as an object.
 *
 * An extractor of the grammar ('mb_id', 'self.stage_index', 'len(batch.reqs)') comes
 * as its plan: where its root sits in ``args`` (or the instance), the attribute
 * steps, whether to take len(). A value the plan cannot read (passed by keyword, an
 * attribute missing) falls back to the extractor itself, which reads it the slow way
 * and counts it, as the template's ``except Exception`` does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject *fallback; /* the extractor; NULL: the value is None */
    PyObject *steps;    /* tuple of attribute names; NULL: no plan, call the extractor */
    Py_ssize_t position; /* index in args when called unbound; -1: the instance */
    Py_ssize_t bound;    /* index in args when called with an instance */
    int use_len;
} Extractor;

enum { IDS_ENCLOSING = 0, IDS_NEW_BATCH = 1, IDS_IDENTITY = 2 }; /* _hotpath._id_mode */
enum { ATTRS_NONE = 0, ATTRS_PLANNED = 2 }; /* 1, a call of read_attrs, is no longer made */

typedef struct {
    PyObject_HEAD
    /* What an open span reads, first and together: a cold call pays for each cache line of
     * the probe it touches, and the gate's fields share the header's line or the next. */
    vectorcallfunc vectorcall;
    long level;
    PyObject *level_state;
    PyTypeObject *level_type; /* the type of LEVEL when its ``active`` is a slot (borrowed, held by level_state) */
    Py_ssize_t active_offset; /* where that slot lives in LEVEL; 0: read it as an attribute */
    PyObject *compiling;
    PyObject *context_var; /* the ContextVar behind cell_or_none (read directly); NULL: call it */
    PyObject *calls_of;
    Py_ssize_t start_index, end_index;
    PyObject *next_span_id, *span_ids; /* span_ids: the counter behind it (its tp_iternext); NULL: call it */
    PyObject *rank_epoch;
    int ids;
    int attrs_mode;
    Extractor mb, size;
    PyObject *attrs;      /* ATTRS_NONE: NO_ATTRS; ATTRS_PLANNED: tuple of keys */
    Py_ssize_t n_attrs;
    Extractor *attr_extractors; /* ATTRS_PLANNED: n_attrs of them */
    PyObject *attr_conditions; /* ATTRS_PLANNED with a condition: per key, None or its condition */
    PyObject *next_batch_id, *batch_ids;
    /* the rest: events made as objects, identities, keep_if and request probes */
    PyObject *name, *level_obj, *kind, *start_index_obj, *end_index_obj;
    PyObject *event_type, *count_error, *identity;
    PyObject *cell_or_none, *context_cell, *current_with_epoch;
    PyObject *keep, *decided, *idle, *current_rank; /* a keep_if probe's; NULL otherwise */
    /* a request probe's (NULL otherwise): its phase, aborted statuses, when, rank keys */
    PyObject *phase, *aborted, *when, *rank_keys, *with_overrides;
    Extractor request_id;
    Py_ssize_t n_fields; /* of the event type: 12 (stage, batch) or 8 (request) */
    PyObject *no_attrs;   /* with conditions: NO_ATTRS, what no attribute read gives */
} Traced;

static PyTypeObject TracedType;
int binding_init(PyObject *module);    /* _binding.c: a traced method bound to its instance */
int conditions_init(PyObject *module); /* _conditions.c: a condition decided by its plan */
int encode_init(PyObject *module);     /* _encode.c: an events frame's payload */
int ring_init(PyObject *module);       /* _ring.c: an exporter's buffer, a span's events as records */
int ring_push_span(PyObject *ring, PyObject *probe, long long start_ns, long long end_ns, int ended,
                   PyObject *const *refs);
int ring_push_object(PyObject *ring, PyObject *obj);
Py_ssize_t ring_held(PyObject *items);
static PyObject *str_active, *str_append, *str_is_compiling_flag, *str_capacity, *str_items;

/* Wall clock minus monotonic clock (sched_trace._clock sets it: at import, after fork). */
static long long clock_offset_ns;

/* --- extractors ---------------------------------------------------------- */

static int
extractor_init(Extractor *e, PyObject *spec)
{
    /* spec: None, or (extractor, plan); plan: None or (position, bound, steps, use_len) */
    memset(e, 0, sizeof(*e));
    if (spec == Py_None)
        return 0;
    PyObject *fallback, *plan;
    if (!PyArg_ParseTuple(spec, "OO", &fallback, &plan))
        return -1;
    if (!PyCallable_Check(fallback)) {
        PyErr_Format(PyExc_TypeError, "extractor %R is not callable", fallback);
        return -1;
    }
    e->fallback = Py_NewRef(fallback);
    if (plan == Py_None)
        return 0;
    PyObject *position, *steps;
    int use_len;
    if (!PyArg_ParseTuple(plan, "OnO!p", &position, &e->bound, &PyTuple_Type, &steps, &use_len))
        return -1;
    e->position = position == Py_None ? -1 : PyLong_AsSsize_t(position);
    if (e->position == -1 && PyErr_Occurred())
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(steps); i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(steps, i))) {
            PyErr_SetString(PyExc_TypeError, "an extractor's steps are attribute names");
            return -1;
        }
    }
    e->steps = Py_NewRef(steps);
    e->use_len = use_len;
    return 0;
}

static void
extractor_clear(Extractor *e)
{
    Py_CLEAR(e->fallback);
    Py_CLEAR(e->steps);
}

static PyObject *
call3(PyObject *function, PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *argv[3] = {a, b, c};
    return PyObject_Vectorcall(function, argv, 3, NULL);
}

/* A plan's attribute steps, then len() when it says so, from its root ``value`` (a reference
 * it takes): the value (a new reference), or NULL with the exception raised. */
PyObject *
plan_steps(PyObject *value, PyObject *steps, int use_len)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(steps); i++) {
        PyObject *next = PyObject_GetAttr(value, PyTuple_GET_ITEM(steps, i));
        Py_DECREF(value);
        if (next == NULL)
            return NULL;
        value = next;
    }
    if (!use_len)
        return value;
    Py_ssize_t length = PyObject_Length(value);
    Py_DECREF(value);
    return length < 0 ? NULL : PyLong_FromSsize_t(length);
}

/* A value by its plan: the root (the instance when ``position`` is -1, else ``args``
 * [position], or [bound] when called with an instance), its attribute steps, len(). A new
 * reference; NULL without an exception where the root is not there (passed by keyword,
 * ``self`` on an unbound call); NULL with one where a step or len() raised. Extractors and
 * conditions (_conditions.c) read their values this way. */
PyObject *
plan_read(PyObject *instance, PyObject *args, Py_ssize_t position, Py_ssize_t bound, PyObject *steps,
          int use_len)
{
    PyObject *value;
    if (position < 0) {
        if (instance == Py_None)
            return NULL;
        value = Py_NewRef(instance);
    }
    else {
        Py_ssize_t index = instance == Py_None ? position : bound;
        if (!PyTuple_Check(args) || index >= PyTuple_GET_SIZE(args))
            return NULL;
        value = Py_NewRef(PyTuple_GET_ITEM(args, index));
    }
    return plan_steps(value, steps, use_len);
}

/* The value (a new reference), or NULL with an exception the template would not catch. */
static PyObject *
extract(Extractor *e, PyObject *instance, PyObject *args, PyObject *kwargs)
{
    if (e->fallback == NULL)
        Py_RETURN_NONE;
    if (e->steps == NULL)
        return call3(e->fallback, instance, args, kwargs);
    PyObject *value = plan_read(instance, args, e->position, e->bound, e->steps, e->use_len);
    if (value != NULL)
        return value;
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
    }
    /* unreadable here: the extractor's slow path reads it and counts it */
    return call3(e->fallback, instance, args, kwargs);
}

/* --- the type ------------------------------------------------------------ */

static int
traced_traverse(Traced *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->kind);
    Py_VISIT(self->event_type);
    Py_VISIT(self->calls_of);
    Py_VISIT(self->count_error);
    Py_VISIT(self->identity);
    Py_VISIT(self->level_state);
    Py_VISIT(self->compiling);
    Py_VISIT(self->cell_or_none);
    Py_VISIT(self->context_var);
    Py_VISIT(self->context_cell);
    Py_VISIT(self->current_with_epoch);
    Py_VISIT(self->rank_epoch);
    Py_VISIT(self->next_span_id);
    Py_VISIT(self->next_batch_id);
    Py_VISIT(self->span_ids);
    Py_VISIT(self->batch_ids);
    Py_VISIT(self->attrs);
    Py_VISIT(self->attr_conditions);
    Py_VISIT(self->no_attrs);
    Py_VISIT(self->keep);
    Py_VISIT(self->decided);
    Py_VISIT(self->idle);
    Py_VISIT(self->current_rank);
    Py_VISIT(self->phase);
    Py_VISIT(self->aborted);
    Py_VISIT(self->when);
    Py_VISIT(self->rank_keys);
    Py_VISIT(self->with_overrides);
    Py_VISIT(self->request_id.fallback);
    Py_VISIT(self->mb.fallback);
    Py_VISIT(self->size.fallback);
    for (Py_ssize_t i = 0; self->attr_extractors && i < self->n_attrs; i++)
        Py_VISIT(self->attr_extractors[i].fallback);
    return 0;
}

static int
traced_clear(Traced *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->level_obj);
    Py_CLEAR(self->kind);
    Py_CLEAR(self->start_index_obj);
    Py_CLEAR(self->end_index_obj);
    Py_CLEAR(self->event_type);
    Py_CLEAR(self->calls_of);
    Py_CLEAR(self->count_error);
    Py_CLEAR(self->identity);
    Py_CLEAR(self->level_state);
    Py_CLEAR(self->compiling);
    Py_CLEAR(self->cell_or_none);
    Py_CLEAR(self->context_var);
    Py_CLEAR(self->context_cell);
    Py_CLEAR(self->current_with_epoch);
    Py_CLEAR(self->rank_epoch);
    Py_CLEAR(self->next_span_id);
    Py_CLEAR(self->next_batch_id);
    Py_CLEAR(self->span_ids);
    Py_CLEAR(self->batch_ids);
    Py_CLEAR(self->attrs);
    Py_CLEAR(self->attr_conditions);
    Py_CLEAR(self->no_attrs);
    Py_CLEAR(self->keep);
    Py_CLEAR(self->decided);
    Py_CLEAR(self->idle);
    Py_CLEAR(self->current_rank);
    Py_CLEAR(self->phase);
    Py_CLEAR(self->aborted);
    Py_CLEAR(self->when);
    Py_CLEAR(self->rank_keys);
    Py_CLEAR(self->with_overrides);
    extractor_clear(&self->request_id);
    extractor_clear(&self->mb);
    extractor_clear(&self->size);
    if (self->attr_extractors) {
        for (Py_ssize_t i = 0; i < self->n_attrs; i++)
            extractor_clear(&self->attr_extractors[i]);
        PyMem_Free(self->attr_extractors);
        self->attr_extractors = NULL;
    }
    return 0;
}

static void
traced_dealloc(Traced *self)
{
    PyObject_GC_UnTrack(self);
    traced_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
helper(PyObject *helpers, const char *key)
{
    PyObject *value = PyDict_GetItemString(helpers, key);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "sched_trace._speedups: helper %s missing", key);
        return NULL;
    }
    return Py_NewRef(value);
}

/* Where instances of ``type`` keep attribute ``name`` when it is a plain object slot
 * (``__slots__``); 0 when it is not one (then it is read as an attribute). */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = _PyType_Lookup(type, name);
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if ((member->type == T_OBJECT_EX || member->type == T_OBJECT) && member->offset > 0)
            return member->offset;
    }
    return 0;
}

/* The object ``method`` is bound to when it is the method ``name`` (a new reference),
 * else NULL without an error; -1 on error. */
static int
bound_to(PyObject *method, const char *name, PyObject **owner)
{
    *owner = NULL;
    if (!PyObject_HasAttrString(method, "__self__"))
        return 0;
    PyObject *found = PyObject_GetAttrString(method, "__self__");
    PyObject *its_name = found == NULL ? NULL : PyObject_GetAttrString(method, "__name__");
    if (its_name == NULL) {
        Py_XDECREF(found);
        return -1;
    }
    if (PyUnicode_Check(its_name) && PyUnicode_CompareWithASCIIString(its_name, name) == 0)
        *owner = found;
    else
        Py_DECREF(found);
    Py_DECREF(its_name);
    return 0;
}

/* The iterator whose ``__next__`` ``next`` is (an itertools.count's, for the span and
 * batch ids), to be advanced through its own slot without the call protocol; *counter
 * stays NULL for anything else (then ``next`` is called). */
static int
counter_behind(PyObject *next, PyObject **counter)
{
    if (bound_to(next, "__next__", counter) < 0)
        return -1;
    if (*counter != NULL && (Py_TYPE(*counter)->tp_iternext == NULL || !PyIter_Check(*counter)))
        Py_CLEAR(*counter);
    return 0;
}

/* The context variable whose ``get`` ``get`` is (the thread's context cell), read with
 * PyContextVar_Get; *var stays NULL for anything else (then ``get`` is called). */
static int
context_var_behind(PyObject *get, PyObject **var)
{
    if (bound_to(get, "get", var) < 0)
        return -1;
    if (*var != NULL && !PyContextVar_CheckExact(*var))
        Py_CLEAR(*var);
    return 0;
}

/* The next id: through the counter's slot when there is one. */
static PyObject *
next_id(PyObject *next, PyObject *counter)
{
    if (counter == NULL)
        return PyObject_CallNoArgs(next);
    PyObject *id = Py_TYPE(counter)->tp_iternext(counter);
    if (id == NULL && !PyErr_Occurred())
        PyErr_SetNone(PyExc_StopIteration);
    return id;
}

/* Where LEVEL keeps ``active``, when it is a slot: one attribute lookup fewer on every call. */
static void
find_active_slot(Traced *self)
{
    PyTypeObject *type = Py_TYPE(self->level_state);
    self->active_offset = slot_offset(type, str_active);
    self->level_type = self->active_offset > 0 ? type : NULL;
}

static PyObject *traced_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames);
static PyObject *kept_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames);
static PyObject *request_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames);
typedef struct Call Call;
static PyObject *traced_open(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs, const Call *call);
static PyObject *kept_open(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs, const Call *call);
static PyObject *request_open(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs, const Call *call);

/* The attributes: NO_ATTRS, or ((key, (extractor, plan), condition or None), ...); a key
 * with a condition is read only where its condition holds (``"EXPR if CONDITION"``). */
static int
attrs_init(Traced *self, int attrs_mode, PyObject *attrs, PyObject *helpers)
{
    if (attrs_mode != ATTRS_NONE && attrs_mode != ATTRS_PLANNED) {
        PyErr_SetString(PyExc_ValueError, "attrs_mode out of range");
        return -1;
    }
    self->attrs_mode = attrs_mode;
    if (attrs_mode != ATTRS_PLANNED) {
        self->attrs = Py_NewRef(attrs);
        return 0;
    }
    if (!PyTuple_Check(attrs)) {
        PyErr_SetString(PyExc_TypeError, "planned attrs are a tuple of (key, extractor, condition) triples");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(attrs);
    PyObject *keys = PyTuple_New(n);
    if (keys == NULL)
        return -1;
    self->attrs = keys;
    self->attr_extractors = PyMem_Calloc(n ? n : 1, sizeof(Extractor));
    if (self->attr_extractors == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->n_attrs = n;
    PyObject *conditions = PyTuple_New(n);
    if (conditions == NULL)
        return -1;
    int conditional = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key, *spec, *condition;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(attrs, i), "UOO", &key, &spec, &condition) ||
            extractor_init(&self->attr_extractors[i], spec) < 0) {
            Py_DECREF(conditions);
            return -1;
        }
        if (condition != Py_None && !PyCallable_Check(condition)) {
            Py_DECREF(conditions);
            PyErr_Format(PyExc_TypeError, "condition %R of attribute %R is not callable", condition, key);
            return -1;
        }
        conditional |= condition != Py_None;
        PyTuple_SET_ITEM(keys, i, Py_NewRef(key));
        PyTuple_SET_ITEM(conditions, i, Py_NewRef(condition));
    }
    if (!conditional) {
        Py_DECREF(conditions);
        return 0;
    }
    self->attr_conditions = conditions;
    return (self->no_attrs = helper(helpers, "NO_ATTRS")) == NULL ? -1 : 0;
}

static PyObject *
traced_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"name", "level", "kind", "start_index", "end_index", "ids", "event_type",
                               "calls_of", "count_error", "identity", "microbatch", "batch_size",
                               "attrs_mode", "attrs", "helpers", "keep", "decided", NULL};
    PyObject *name, *kind, *event_type, *calls_of, *count_error, *identity, *mb, *size, *attrs, *helpers;
    PyObject *keep = Py_None, *decided = Py_None;
    long level;
    Py_ssize_t start_index, end_index;
    int ids, attrs_mode;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UlUnniO!O!OOOOiOO!|$OO:Traced", keywords, &name, &level,
                                     &kind, &start_index, &end_index, &ids, &PyType_Type, &event_type,
                                     &PyList_Type, &calls_of, &count_error, &identity, &mb, &size, &attrs_mode,
                                     &attrs, &PyDict_Type, &helpers, &keep, &decided))
        return NULL;
    PyTypeObject *event = (PyTypeObject *)event_type;
    if (!PyType_IsSubtype(event, &PyTuple_Type) || event->tp_basicsize != PyTuple_Type.tp_basicsize ||
        event->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_Format(PyExc_TypeError, "event_type %R is not a tuple type without fields of its own", event_type);
        return NULL;
    }
    if (ids < IDS_ENCLOSING || ids > IDS_IDENTITY) {
        PyErr_SetString(PyExc_ValueError, "ids out of range");
        return NULL;
    }
    Traced *self = (Traced *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = keep == Py_None ? traced_vectorcall : kept_vectorcall;
    self->n_fields = 12;
    self->level = level;
    self->ids = ids;
    self->start_index = start_index;
    self->end_index = end_index;
    self->name = Py_NewRef(name);
    self->kind = Py_NewRef(kind);
    self->event_type = Py_NewRef(event_type);
    self->calls_of = Py_NewRef(calls_of);
    self->count_error = Py_NewRef(count_error);
    self->identity = Py_NewRef(identity);
    if ((self->level_obj = PyLong_FromLong(level)) == NULL ||
        (self->start_index_obj = PyLong_FromSsize_t(start_index)) == NULL ||
        (self->end_index_obj = PyLong_FromSsize_t(end_index)) == NULL ||
        (self->level_state = helper(helpers, "LEVEL")) == NULL ||
        (self->compiling = helper(helpers, "compiling")) == NULL ||
        (self->cell_or_none = helper(helpers, "_cell_or_none")) == NULL ||
        (self->context_cell = helper(helpers, "_context_cell")) == NULL ||
        (self->current_with_epoch = helper(helpers, "current_with_epoch")) == NULL ||
        (self->rank_epoch = helper(helpers, "rank_epoch")) == NULL ||
        (self->next_span_id = helper(helpers, "_next_span_id")) == NULL ||
        (self->next_batch_id = helper(helpers, "_next_batch_id")) == NULL ||
        counter_behind(self->next_span_id, &self->span_ids) < 0 ||
        counter_behind(self->next_batch_id, &self->batch_ids) < 0 ||
        context_var_behind(self->cell_or_none, &self->context_var) < 0)
        goto error;
    find_active_slot(self);
    if (keep != Py_None) {
        if (!PyCallable_Check(keep) || !PyCallable_Check(decided)) {
            PyErr_SetString(PyExc_TypeError, "keep and decided are callables");
            goto error;
        }
        self->keep = Py_NewRef(keep);
        self->decided = Py_NewRef(decided);
        if ((self->idle = helper(helpers, "idle")) == NULL ||
            (self->current_rank = helper(helpers, "current_rank")) == NULL)
            goto error;
        if (!PyDict_Check(self->idle)) {
            PyErr_SetString(PyExc_TypeError, "idle is a dict of counts");
            goto error;
        }
    }
    if (!PyList_Check(self->compiling) || PyList_GET_SIZE(self->compiling) != 2 ||
        !PyList_Check(self->rank_epoch) || PyList_GET_SIZE(self->rank_epoch) != 1) {
        PyErr_SetString(PyExc_TypeError, "compiling is a two-item list, rank_epoch a one-item list");
        goto error;
    }
    if (extractor_init(&self->mb, mb) < 0 || extractor_init(&self->size, size) < 0)
        goto error;
    if (attrs_init(self, attrs_mode, attrs, helpers) < 0)
        goto error;
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

/* --- the call ------------------------------------------------------------ */

static PyObject *
call_through(PyObject *wrapped, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_Check(kwargs) && PyDict_GET_SIZE(kwargs) == 0)
        kwargs = NULL;
    if (kwargs != NULL && kwargs != Py_None && !PyDict_Check(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "kwargs must be a dict");
        return NULL;
    }
    return PyObject_Call(wrapped, args, kwargs == Py_None ? NULL : kwargs);
}

/* How a probe calls what it traces: wrapt's form, ``wrapped(*args, **kwargs)`` with wrapped
 * bound to the instance; or a method's own, ``function(instance, *args, **kwargs)`` from the
 * caller's own argument vector (a TracedMethod's call, _binding.c: nothing made for it). */
struct Call {
    PyObject *wrapped; /* wrapt's form: bound to the instance, called with the probe's args and kwargs */
    PyObject *function; /* or the method's own: called with the vector below */
    PyObject *const *argv;
    size_t nargsf;
    PyObject *kwnames;
};

static PyObject *
call_run(const Call *call, PyObject *args, PyObject *kwargs)
{
    if (call->function != NULL)
        return PyObject_Vectorcall(call->function, call->argv, call->nargsf, call->kwnames);
    return call_through(call->wrapped, args, kwargs);
}

/* A method call's vector (instance, *args, then the values of kwnames) as wrapt passes it:
 * ``args`` the tuple after the instance, ``kwargs`` a dict, empty or not. 0, or -1 with an
 * error and both cleared. Used by _binding.c too. */
int
vector_args(PyObject *const *argv, Py_ssize_t nargs, PyObject *kwnames, PyObject **args, PyObject **kwargs)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    *args = PyTuple_New(nargs - 1);
    *kwargs = PyDict_New();
    if (*args == NULL || *kwargs == NULL)
        goto fail;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(*args, i - 1, Py_NewRef(argv[i]));
    for (Py_ssize_t i = 0; i < nkw; i++)
        if (PyDict_SetItem(*kwargs, PyTuple_GET_ITEM(kwnames, i), argv[nargs + i]) < 0)
            goto fail;
    return 0;
fail:
    Py_CLEAR(*args);
    Py_CLEAR(*kwargs);
    return -1;
}

/* time.monotonic_ns() + _clock._offset_ns, read from the clock time.monotonic_ns reads, into
 * ``out``: 0, or -1 with an error. */
static int
now_raw(long long *out)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t now;
    if (PyTime_Monotonic(&now) < 0)
        return -1;
#else
    _PyTime_t now = _PyTime_GetMonotonicClock();
#endif
    *out = (long long)now + clock_offset_ns;
    return 0;
}

static PyObject *
now_ns(void)
{
    long long now;
    return now_raw(&now) < 0 ? NULL : PyLong_FromLongLong(now);
}

static PyObject *
set_clock_offset(PyObject *module, PyObject *arg)
{
    long long offset = PyLong_AsLongLong(arg);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    clock_offset_ns = offset;
    Py_RETURN_NONE;
}

static PyObject *
read_attrs(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs)
{
    if (self->attrs_mode == ATTRS_NONE)
        return Py_NewRef(self->attrs);
    PyObject *extra = PyDict_New();
    if (extra == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n_attrs; i++) {
        PyObject *condition = self->attr_conditions ? PyTuple_GET_ITEM(self->attr_conditions, i) : Py_None;
        if (condition != Py_None) { /* the condition counts what it cannot read and never raises */
            PyObject *holds = call3(condition, instance, args, kwargs);
            int truth = holds == NULL ? -1 : PyObject_IsTrue(holds);
            Py_XDECREF(holds);
            if (truth < 0) {
                Py_DECREF(extra);
                return NULL;
            }
            if (!truth)
                continue;
        }
        PyObject *value = extract(&self->attr_extractors[i], instance, args, kwargs);
        if (value == NULL || PyDict_SetItem(extra, PyTuple_GET_ITEM(self->attrs, i), value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(extra);
            return NULL;
        }
        Py_DECREF(value);
    }
    if (self->no_attrs != NULL && PyDict_GET_SIZE(extra) == 0) { /* no condition held: as read_attrs */
        Py_DECREF(extra);
        return Py_NewRef(self->no_attrs);
    }
    return extra;
}

static PyObject *
new_event(Traced *self, PyObject *const *fields)
{
    PyTypeObject *type = (PyTypeObject *)self->event_type;
    PyObject *event = type->tp_alloc(type, self->n_fields);
    if (event == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n_fields; i++)
        PyTuple_SET_ITEM(event, i, Py_NewRef(fields[i]));
    return event;
}

static int
atomic(PyObject *value)
{
    return value == Py_None || PyLong_CheckExact(value) || PyUnicode_CheckExact(value) ||
           PyFloat_CheckExact(value) || PyBool_Check(value);
}

/* An event without an error whose microbatch and batch size are plain values is left out
 * of the cyclic collector, as CPython leaves out tuples of atomic values after their
 * first collection: it can sit in a plugin's buffer for a while, and the collector's
 * passes over kept events were about a sixth of an enabled span's instructions
 * (benchmarks/bench_instructions.py). Its other fields are the probe's strings and
 * numbers, the rank (ours), and the attributes dict built for this event (still
 * tracked itself); only a plugin that stored the event inside one of its own attribute
 * values would make a cycle the collector cannot see. */
static void
untrack_plain(PyObject *event, PyObject *mb, PyObject *size)
{
    if (atomic(mb) && atomic(size))
        PyObject_GC_UnTrack(event);
}

/* An exception held while events are delivered (fetched, normalized, its traceback set). */
typedef struct {
    PyObject *type, *value, *traceback;
} Raised;

static void
raised_take(Raised *raised)
{
    PyErr_Fetch(&raised->type, &raised->value, &raised->traceback);
    PyErr_NormalizeException(&raised->type, &raised->value, &raised->traceback);
    if (raised->traceback != NULL && raised->value != NULL)
        PyException_SetTraceback(raised->value, raised->traceback);
}

static void
raised_clear(Raised *raised)
{
    Py_CLEAR(raised->type);
    Py_CLEAR(raised->value);
    Py_CLEAR(raised->traceback);
}

/* The end of a traced call: its result, or its error raised again; when the end itself
 * failed, what it raised replaces both, as a ``finally`` that raises does. */
static PyObject *
raised_finish(Raised *raised, PyObject *result, int failed)
{
    if (failed) {
        Py_XDECREF(result);
        raised_clear(raised);
        return NULL;
    }
    if (result == NULL)
        PyErr_Restore(raised->type, raised->value, raised->traceback);
    return result;
}

/* ``pair`` (function, owner) of a probe's event_calls: the function called with ``event``.
 * A plugin that raises an Exception is counted (count_error), never propagated. */
static int
call_hook(Traced *self, PyObject *pair, PyObject *event)
{
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_SetString(PyExc_TypeError, "event_calls hold tuples of (function, owner)");
        return -1;
    }
    PyObject *done = PyObject_CallOneArg(PyTuple_GET_ITEM(pair, 0), event);
    if (done != NULL) {
        Py_DECREF(done);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    Raised raised;
    raised_take(&raised);
    PyObject *argv[3] = {PyTuple_GET_ITEM(pair, 1), self->kind, raised.value};
    PyObject *counted = PyObject_Vectorcall(self->count_error, argv, 3, NULL);
    raised_clear(&raised);
    if (counted == NULL)
        return -1;
    Py_DECREF(counted);
    return 0;
}

/* Hand ``event`` to each of ``calls``, or to ``sink`` (an undecided keep_if span's list).
 * A plugin that raises an Exception is counted (count_error), never propagated. */
static int
deliver(Traced *self, PyObject *calls, PyObject *sink, PyObject *index, PyObject *event)
{
    if (sink != Py_None) {
        PyObject *item = PyTuple_Pack(2, index, event);
        if (item == NULL)
            return -1;
        int status;
        if (PyList_CheckExact(sink))
            status = PyList_Append(sink, item);
        else {
            PyObject *done = PyObject_CallMethodOneArg(sink, str_append, item);
            status = done == NULL ? -1 : 0;
            Py_XDECREF(done);
        }
        Py_DECREF(item);
        return status;
    }
    if (!PyTuple_Check(calls)) {
        PyErr_SetString(PyExc_TypeError, "event_calls hold tuples of (function, owner)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(calls); i++)
        if (call_hook(self, PyTuple_GET_ITEM(calls, i), event) < 0)
            return -1;
    return 0;
}

static PyObject *
calls_at(Traced *self, Py_ssize_t index)
{
    if (!PyList_Check(self->calls_of) || index < 0 || index >= PyList_GET_SIZE(self->calls_of)) {
        PyErr_SetString(PyExc_IndexError, "event index out of range");
        return NULL;
    }
    return Py_NewRef(PyList_GET_ITEM(self->calls_of, index));
}

/* Called as traced(wrapped, instance, args, kwargs)? 0, else -1 with a TypeError. */
static int
check_call(size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) == 4 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0))
        return 0;
    PyErr_SetString(PyExc_TypeError, "traced(wrapped, instance, args, kwargs) takes 4 positional arguments");
    return -1;
}

/* 1 when the probe's level is at or below the active one, 0 when above, -1 on error. */
static int
level_on(Traced *self)
{
    PyObject *active_obj;
    if (self->active_offset > 0 && Py_TYPE(self->level_state) == self->level_type) {
        /* the slot ``_Level.active``, read where its member descriptor says it lives */
        active_obj = *(PyObject **)((char *)self->level_state + self->active_offset);
        if (active_obj == NULL)
            return PyErr_SetString(PyExc_AttributeError, "active"), -1;
        Py_INCREF(active_obj);
    }
    else if ((active_obj = PyObject_GetAttr(self->level_state, str_active)) == NULL)
        return -1;
    long active = PyLong_AsLong(active_obj);
    Py_DECREF(active_obj);
    if (active == -1 && PyErr_Occurred())
        return -1;
    return self->level <= active;
}

/* The gate stage and batch probes open with: 1 to trace, 0 to call through, -1 on error. */
static int
gate(Traced *self)
{
    int on = level_on(self);
    if (on <= 0)
        return on;
    PyObject *compiling = PyList_GET_ITEM(self->compiling, 0);
    if (compiling == Py_None)
        return 1;
    PyObject *known = PyList_GET_ITEM(self->compiling, 1); /* (is_compiling, its globals) */
    if (PyTuple_Check(known) && PyTuple_GET_SIZE(known) == 2 && PyTuple_GET_ITEM(known, 0) == compiling &&
        PyDict_Check(PyTuple_GET_ITEM(known, 1))) {
        PyObject *flag = PyDict_GetItemWithError(PyTuple_GET_ITEM(known, 1), str_is_compiling_flag);
        if (flag != NULL) { /* what is_compiling() returns, without its two Python calls */
            int truth = PyObject_IsTrue(flag);
            return truth < 0 ? -1 : !truth;
        }
        if (PyErr_Occurred())
            return -1;
    }
    Py_INCREF(compiling);
    PyObject *busy = PyObject_CallNoArgs(compiling);
    Py_DECREF(compiling);
    if (busy == NULL)
        return -1;
    int truth = PyObject_IsTrue(busy);
    Py_DECREF(busy);
    return truth < 0 ? -1 : !truth;
}

/* The thread's context cell (a new reference), its top checked: (parent, batch id, rank, sink). */
static PyObject *
context_cell(Traced *self)
{
    PyObject *cell;
    if (self->context_var == NULL)
        cell = PyObject_CallOneArg(self->cell_or_none, Py_None);
    else if (PyContextVar_Get(self->context_var, Py_None, &cell) < 0)
        return NULL;
    if (cell == Py_None) {
        Py_DECREF(cell);
        cell = PyObject_CallNoArgs(self->context_cell);
    }
    if (cell == NULL)
        return NULL;
    if (!PyList_Check(cell) || PyList_GET_SIZE(cell) < 2 || !PyTuple_Check(PyList_GET_ITEM(cell, 0)) ||
        PyTuple_GET_SIZE(PyList_GET_ITEM(cell, 0)) != 4) {
        Py_DECREF(cell);
        PyErr_SetString(PyExc_SystemError, "sched_trace: malformed context cell");
        return NULL;
    }
    return cell;
}

/* The thread's own rank, cached in the cell while the identities' epoch holds (a new
 * reference): what _probe._thread_rank does when the epoch moved. */
static PyObject *
thread_rank(Traced *self, PyObject *cell)
{
    PyObject *cached = Py_NewRef(PyList_GET_ITEM(cell, 1));
    if (!PyTuple_Check(cached) || PyTuple_GET_SIZE(cached) != 2) {
        Py_DECREF(cached);
        PyErr_SetString(PyExc_SystemError, "sched_trace: malformed rank cache");
        return NULL;
    }
    PyObject *epoch = Py_NewRef(PyList_GET_ITEM(self->rank_epoch, 0));
    int changed = PyObject_RichCompareBool(PyTuple_GET_ITEM(cached, 1), epoch, Py_NE);
    Py_DECREF(epoch);
    if (changed > 0) {
        Py_SETREF(cached, PyObject_CallNoArgs(self->current_with_epoch));
        if (cached == NULL)
            return NULL;
        if (!PyTuple_Check(cached) || PyTuple_GET_SIZE(cached) != 2) {
            Py_DECREF(cached);
            PyErr_SetString(PyExc_TypeError, "current_with_epoch() returns (rank, epoch)");
            return NULL;
        }
        if (PyList_SetItem(cell, 1, Py_NewRef(cached)) < 0) {
            Py_DECREF(cached);
            return NULL;
        }
    }
    PyObject *rank = changed < 0 ? NULL : Py_NewRef(PyTuple_GET_ITEM(cached, 0));
    Py_DECREF(cached);
    return rank;
}

/* What a traced call holds while it runs (new references, NULL until taken). */
typedef struct {
    PyObject *cell;      /* the thread's context cell */
    PyObject *top;       /* its top when the call began: (parent, batch id, rank, sink) */
    PyObject *rank, *batch_id, *inherited, *span_id;
    PyObject *start_ns; /* start_raw as an int, made when an event object is (NULL until then) */
    PyObject *mb, *size, *extra;
    long long start_raw;
} Span;

static void
span_clear(Span *span)
{
    Py_CLEAR(span->cell);
    Py_CLEAR(span->top);
    Py_CLEAR(span->rank);
    Py_CLEAR(span->batch_id);
    Py_CLEAR(span->inherited);
    Py_CLEAR(span->span_id);
    Py_CLEAR(span->start_ns);
    Py_CLEAR(span->mb);
    Py_CLEAR(span->size);
    Py_CLEAR(span->extra);
}

/* The thread's context cell and its top taken into ``span``; the top's sink (borrowed:
 * an undecided keep_if span's list, or None), or NULL on error. */
static PyObject *
open_span(Traced *self, Span *span)
{
    if ((span->cell = context_cell(self)) == NULL)
        return NULL;
    span->top = Py_NewRef(PyList_GET_ITEM(span->cell, 0));
    return PyTuple_GET_ITEM(span->top, 3);
}

/* rank, batch_id, inherited = identity(instance, args, kwargs, rank, batch_id) */
static int
identify(Traced *self, Span *span, PyObject *instance, PyObject *args, PyObject *kwargs, PyObject *rank,
         PyObject *batch_id)
{
    PyObject *argv[5] = {instance, args, kwargs, rank, batch_id};
    PyObject *ids = PyObject_Vectorcall(self->identity, argv, 5, NULL);
    if (ids == NULL)
        return -1;
    if (!PyTuple_Check(ids) || PyTuple_GET_SIZE(ids) != 3) {
        Py_DECREF(ids);
        PyErr_SetString(PyExc_TypeError, "identity() returns (rank, batch_id, inherited)");
        return -1;
    }
    Py_XSETREF(span->rank, Py_NewRef(PyTuple_GET_ITEM(ids, 0)));
    Py_XSETREF(span->batch_id, Py_NewRef(PyTuple_GET_ITEM(ids, 1)));
    Py_XSETREF(span->inherited, Py_NewRef(PyTuple_GET_ITEM(ids, 2)));
    Py_DECREF(ids);
    return 0;
}

/* None (the thread's own) replaced by the thread's rank. */
static int
own_rank(Traced *self, Span *span)
{
    if (span->rank != Py_None)
        return 0;
    Py_SETREF(span->rank, thread_rank(self, span->cell));
    return span->rank == NULL ? -1 : 0;
}

/* The extractors' values: micro-batch, batch size, attributes. */
static int
read_values(Traced *self, Span *span, PyObject *instance, PyObject *args, PyObject *kwargs)
{
    if ((span->mb = extract(&self->mb, instance, args, kwargs)) == NULL ||
        (span->size = extract(&self->size, instance, args, kwargs)) == NULL ||
        (span->extra = read_attrs(self, instance, args, kwargs)) == NULL)
        return -1;
    return 0;
}

/* A stage or batch event (``refs``: rank, mb, batch_id, size, extra, error, span_id,
 * parent; ``end`` None for a start event). An event without an error whose micro-batch and
 * batch size are plain values is left out of the collector (untrack_plain). */
static PyObject *
fields_event(Traced *self, PyObject *start, PyObject *end, PyObject *const *refs)
{
    PyObject *fields[12] = {self->name, self->level_obj, start, end, refs[0], refs[1], refs[2], refs[3], refs[4],
                            refs[5], refs[6], refs[7]};
    PyObject *event = new_event(self, fields);
    if (event != NULL && refs[5] == Py_None)
        untrack_plain(event, refs[1], refs[3]);
    return event;
}

/* The event a record in an exporter's Ring stands for (_ring.c calls it on the exporter
 * thread when it takes the record): the same tuple emit_span would have made. */
PyObject *
span_event(PyObject *probe, long long start_ns, long long end_ns, int ended, PyObject *const *refs)
{
    if (!Py_IS_TYPE(probe, &TracedType)) {
        PyErr_SetString(PyExc_TypeError, "a ring's record was not made by a probe");
        return NULL;
    }
    PyObject *start = PyLong_FromLongLong(start_ns);
    PyObject *end = start == NULL ? NULL : ended ? PyLong_FromLongLong(end_ns) : Py_NewRef(Py_None);
    PyObject *event = end == NULL ? NULL : fields_event((Traced *)probe, start, end, refs);
    Py_XDECREF(start);
    Py_XDECREF(end);
    return event;
}

/* For _encode.c: what a ring's record takes from its probe (borrowed): the event class,
 * the name, the level; -1 if ``probe`` is not one. */
int
span_probe(PyObject *probe, PyObject **event_type, PyObject **name, PyObject **level)
{
    if (!Py_IS_TYPE(probe, &TracedType) || ((Traced *)probe)->n_fields != 12)
        return -1;
    Traced *self = (Traced *)probe;
    *event_type = self->event_type;
    *name = self->name;
    *level = self->level_obj;
    return 0;
}

/* The span's start event (``ended`` 0) or end event as an object (a new reference). */
static PyObject *
span_object(Traced *self, Span *span, PyObject *const *refs, long long end_ns, int ended)
{
    if (span->start_ns == NULL && (span->start_ns = PyLong_FromLongLong(span->start_raw)) == NULL)
        return NULL;
    PyObject *end = ended ? PyLong_FromLongLong(end_ns) : Py_NewRef(Py_None);
    PyObject *event = end == NULL ? NULL : fields_event(self, span->start_ns, end, refs);
    Py_XDECREF(end);
    return event;
}

static PyObject *appender_ring(PyObject *hook);

#define MAX_RINGS 8 /* listeners looked at once per event; with more, every one is called with the event */

/* The span's start event (``ended`` 0) or end event, to its plugins or to ``sink``, if any
 * listens. Where every listener is an exporter's buffer in C (a Ring, appender_ring), each
 * takes the event as a record: no event object is made on this thread (nor on the exporter
 * threads, whose encoder reads the records). Where another listener wants the object, it
 * is made once and each Ring takes it as it is. */
static int
emit_span(Traced *self, Span *span, long long end_ns, int ended, PyObject *error, PyObject *sink)
{
    PyObject *calls = calls_at(self, ended ? self->end_index : self->start_index);
    if (calls == NULL)
        return -1;
    int status = PyObject_IsTrue(calls);
    if (status <= 0) {
        Py_DECREF(calls);
        return status;
    }
    PyObject *refs[8] = {span->rank, span->mb, span->batch_id, span->size, span->extra, error, span->span_id,
                         PyTuple_GET_ITEM(span->top, 0)};
    PyObject *rings[MAX_RINGS] = {NULL};
    Py_ssize_t n = PyTuple_Check(calls) ? PyTuple_GET_SIZE(calls) : 0, held = 0;
    if (sink == Py_None && n > 0 && n <= MAX_RINGS) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyTuple_GET_ITEM(calls, i);
            rings[i] = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 ? appender_ring(PyTuple_GET_ITEM(pair, 0))
                                                                         : NULL;
            held += rings[i] != NULL;
        }
    }
    if (held == n && n > 0) {
        for (Py_ssize_t i = 0; i < n && status >= 0; i++)
            status = ring_push_span(rings[i], (PyObject *)self, span->start_raw, end_ns, ended, refs);
        Py_DECREF(calls);
        return status < 0 ? -1 : 0;
    }
    PyObject *event = span_object(self, span, refs, end_ns, ended);
    if (event == NULL)
        status = -1;
    else if (held == 0)
        status = deliver(self, calls, sink, ended ? self->end_index_obj : self->start_index_obj, event);
    else /* no Python code runs between appender_ring and here but the hooks before a ring's turn */
        for (Py_ssize_t i = 0; i < n && status >= 0; i++)
            status = rings[i] != NULL && (rings[i] = appender_ring(PyTuple_GET_ITEM(PyTuple_GET_ITEM(calls, i), 0)))
                         ? ring_push_object(rings[i], event)
                         : call_hook(self, PyTuple_GET_ITEM(calls, i), event);
    Py_XDECREF(event);
    Py_DECREF(calls);
    return status < 0 ? -1 : 0;
}

/* A stage or batch probe (TEMPLATE): the start event, the call, the end event. */
static PyObject *
traced_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Traced *self = (Traced *)op;
    if (check_call(nargsf, kwnames) < 0)
        return NULL;
    PyObject *wrapped = argv[0], *instance = argv[1], *args = argv[2], *kwargs = argv[3];
    int open = gate(self); /* the level, then torch.compile tracing */
    if (open <= 0)
        return open < 0 ? NULL : call_through(wrapped, args, kwargs);
    Call call = {wrapped};
    return traced_open(self, instance, args, kwargs, &call);
}

/* A stage or batch probe's span around the call, its gate open. */
static PyObject *
traced_open(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs, const Call *call)
{
    Span span = {NULL};
    PyObject *result = NULL, *sink = open_span(self, &span);
    if (sink == NULL)
        goto done;
    span.batch_id = Py_NewRef(PyTuple_GET_ITEM(span.top, 1));
    span.rank = Py_NewRef(PyTuple_GET_ITEM(span.top, 2));
    if (own_rank(self, &span) < 0)
        goto done;
    span.inherited = Py_NewRef(span.batch_id); /* what spans inside this one take as their batch id */
    if (self->ids == IDS_NEW_BATCH) { /* a batch takes a new batch id, and so do the spans inside it */
        PyObject *own = next_id(self->next_batch_id, self->batch_ids);
        if (own == NULL)
            goto done;
        Py_SETREF(span.batch_id, Py_NewRef(own));
        Py_SETREF(span.inherited, own);
    }
    else if (self->ids == IDS_IDENTITY &&
             identify(self, &span, instance, args, kwargs, span.rank, span.batch_id) < 0)
        goto done;
    if ((span.span_id = next_id(self->next_span_id, self->span_ids)) == NULL || now_raw(&span.start_raw) < 0 ||
        read_values(self, &span, instance, args, kwargs) < 0 || emit_span(self, &span, 0, 0, Py_None, sink) < 0)
        goto done;
    PyObject *inside = PyTuple_Pack(4, span.span_id, span.inherited, span.rank, sink);
    if (inside == NULL || PyList_SetItem(span.cell, 0, inside) < 0) /* steals inside */
        goto done;

    result = call_run(call, args, kwargs);

    Raised raised = {NULL};
    if (result == NULL)
        raised_take(&raised);
    long long end_ns;
    int clock = now_raw(&end_ns); /* the cell's top is given back whatever happens */
    int failed = PyList_SetItem(span.cell, 0, Py_NewRef(span.top)) < 0 || clock < 0 ||
                 emit_span(self, &span, end_ns, 1, raised.value != NULL ? raised.value : Py_None, sink) < 0;
    result = raised_finish(&raised, result, failed);
done:
    span_clear(&span);
    return result;
}

static int
count_idle(Traced *self)
{
    PyObject *count = PyDict_GetItemWithError(self->idle, self->name);
    if (count == NULL && PyErr_Occurred())
        return -1;
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL)
        return -1;
    PyObject *more = count == NULL ? Py_NewRef(one) : PyNumber_Add(count, one);
    Py_DECREF(one);
    if (more == NULL)
        return -1;
    int status = PyDict_SetItem(self->idle, self->name, more);
    Py_DECREF(more);
    return status;
}


/* --- a keep_if probe: the call, the decision, then its events ------------ */

static PyObject *
kept_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Traced *self = (Traced *)op;
    if (check_call(nargsf, kwnames) < 0)
        return NULL;
    PyObject *wrapped = argv[0], *instance = argv[1], *args = argv[2], *kwargs = argv[3];
    int open = gate(self);
    if (open <= 0)
        return open < 0 ? NULL : call_through(wrapped, args, kwargs);
    Call call = {wrapped};
    return kept_open(self, instance, args, kwargs, &call);
}

/* A keep_if probe's call, decision and events, its gate open. */
static PyObject *
kept_open(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs, const Call *call)
{
    Span span = {NULL};
    PyObject *pending = NULL, *result = NULL, *sink = open_span(self, &span);
    if (sink == NULL)
        goto done;
    if (self->ids == IDS_IDENTITY) { /* rank keys, a batch id or a batch: Probe.identity */
        PyObject *enclosing = PyTuple_GET_ITEM(span.top, 2);
        int truth = PyObject_IsTrue(enclosing);
        PyObject *around = truth < 0 ? NULL : truth ? Py_NewRef(enclosing) : PyObject_CallNoArgs(self->current_rank);
        if (around == NULL)
            goto done;
        int status = identify(self, &span, instance, args, kwargs, around, PyTuple_GET_ITEM(span.top, 1));
        Py_DECREF(around);
        if (status < 0)
            goto done;
    }
    else { /* spans inside take the enclosing rank (None: the thread's) and batch */
        span.rank = Py_NewRef(PyTuple_GET_ITEM(span.top, 2));
        span.batch_id = Py_NewRef(PyTuple_GET_ITEM(span.top, 1));
        span.inherited = Py_NewRef(span.batch_id);
    }
    if ((span.span_id = next_id(self->next_span_id, self->span_ids)) == NULL || now_raw(&span.start_raw) < 0 ||
        (span.start_ns = PyLong_FromLongLong(span.start_raw)) == NULL || (pending = PyList_New(0)) == NULL)
        goto done;
    PyObject *inside = PyTuple_Pack(4, span.span_id, span.inherited, span.rank, pending); /* inside waits */
    if (inside == NULL || PyList_SetItem(span.cell, 0, inside) < 0)
        goto done;

    result = call_run(call, args, kwargs);

    Raised raised = {NULL};
    if (result == NULL)
        raised_take(&raised);
    int failed = PyList_SetItem(span.cell, 0, Py_NewRef(span.top)) < 0;
    int kept = 1; /* an error is never idle */
    if (!failed && raised.value == NULL) {
        PyObject *kargv[4] = {instance, args, kwargs, result};
        PyObject *verdict = PyObject_Vectorcall(self->keep, kargv, 4, NULL);
        kept = verdict == NULL ? -1 : PyObject_IsTrue(verdict);
        Py_XDECREF(verdict);
        failed = kept < 0;
    }
    Py_ssize_t waiting = PyList_GET_SIZE(pending);
    if (!failed && (!kept || waiting || sink != Py_None)) { /* idle, or events inside it, or a span around it, wait */
        failed = !kept && count_idle(self) < 0;
        if (!failed && (kept || waiting)) {
            PyObject *decided = PyTuple_Pack(4, span.span_id, span.batch_id, span.rank, span.start_ns);
            PyObject *dargv[8] = {kept ? Py_True : Py_False, span.top, decided, pending, instance, args, kwargs,
                                  raised.value != NULL ? raised.value : Py_None};
            PyObject *done_ = decided == NULL ? NULL : PyObject_Vectorcall(self->decided, dargv, 8, NULL);
            failed = done_ == NULL;
            Py_XDECREF(done_);
            Py_XDECREF(decided);
        }
    }
    else if (!failed) { /* kept, and nothing waits: its start and end events now (what Probe._decided does) */
        PyObject *error = raised.value != NULL ? raised.value : Py_None;
        long long end_ns;
        failed = now_raw(&end_ns) < 0 ||
                 own_rank(self, &span) < 0 ||
                 read_values(self, &span, instance, args, kwargs) < 0 ||
                 emit_span(self, &span, 0, 0, Py_None, Py_None) < 0 ||
                 emit_span(self, &span, end_ns, 1, error, Py_None) < 0;
    }
    result = raised_finish(&raised, result, failed);
done:
    span_clear(&span);
    Py_XDECREF(pending);
    return result;
}

/* --- a request probe: its phase at call entry, then the call ------------- */

static PyObject *
request_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Traced *self = (Traced *)op;
    if (check_call(nargsf, kwnames) < 0)
        return NULL;
    PyObject *wrapped = argv[0], *instance = argv[1], *args = argv[2], *kwargs = argv[3];
    int on = level_on(self);
    if (on <= 0)
        return on < 0 ? NULL : call_through(wrapped, args, kwargs);
    Call call = {wrapped};
    return request_open(self, instance, args, kwargs, &call);
}

/* A request probe's phase event, its level on, then the call. */
static PyObject *
request_open(Traced *self, PyObject *instance, PyObject *args, PyObject *kwargs, const Call *call)
{
    PyObject *calls = NULL, *rid = NULL, *cell = NULL, *rank = NULL, *top = NULL, *extra = NULL;
    PyObject *prompt = NULL, *output = NULL, *ts = NULL, *rid_text = NULL, *event = NULL, *phase = NULL;
    int status = -1;
    if ((calls = calls_at(self, self->start_index)) == NULL)
        goto done;
    int listening = PyObject_IsTrue(calls);
    if (listening < 0)
        goto done;
    if (listening && self->when != Py_None) {
        PyObject *verdict = call3(self->when, instance, args, kwargs);
        listening = verdict == NULL ? -1 : PyObject_IsTrue(verdict);
        Py_XDECREF(verdict);
        if (listening < 0)
            goto done;
    }
    if (!listening || (rid = extract(&self->request_id, instance, args, kwargs)) == NULL) {
        status = listening ? -1 : 0;
        goto done;
    }
    if (rid == Py_None) { /* unreadable: counted in stats()['extract_missing'] by the extractor */
        status = 0;
        goto done;
    }
    if ((cell = context_cell(self)) == NULL || (rank = thread_rank(self, cell)) == NULL)
        goto done; /* the thread's own rank, never an enclosing span's */
    top = Py_NewRef(PyList_GET_ITEM(cell, 0));
    if (self->rank_keys != Py_None && PyTuple_GET_SIZE(self->rank_keys)) {
        Py_ssize_t n = PyTuple_GET_SIZE(self->rank_keys);
        PyObject *overrides = PyTuple_New(n);
        if (overrides == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyTuple_GET_ITEM(self->rank_keys, i);
            PyObject *value = call3(PyTuple_GET_ITEM(pair, 1), instance, args, kwargs);
            PyObject *item = value == NULL ? NULL : PyTuple_Pack(2, PyTuple_GET_ITEM(pair, 0), value);
            Py_XDECREF(value);
            if (item == NULL) {
                Py_DECREF(overrides);
                goto done;
            }
            PyTuple_SET_ITEM(overrides, i, item);
        }
        PyObject *oargv[2] = {rank, overrides};
        Py_SETREF(rank, PyObject_Vectorcall(self->with_overrides, oargv, 2, NULL));
        Py_DECREF(overrides);
        if (rank == NULL)
            goto done;
    }
    if ((extra = read_attrs(self, instance, args, kwargs)) == NULL ||
        (prompt = extract(&self->mb, instance, args, kwargs)) == NULL ||
        (output = extract(&self->size, instance, args, kwargs)) == NULL)
        goto done;
    phase = Py_NewRef(self->phase);
    if (PyAnySet_Check(self->aborted) && PySet_GET_SIZE(self->aborted)) {
        PyObject *got = PyObject_CallMethod(extra, "get", "s", "status");
        PyObject *text = got == NULL ? NULL : PyObject_Str(got);
        Py_XDECREF(got);
        int hit = text == NULL ? -1 : PySet_Contains(self->aborted, text);
        Py_XDECREF(text);
        if (hit < 0)
            goto done;
        if (hit)
            Py_SETREF(phase, PyUnicode_FromString("aborted"));
        if (phase == NULL)
            goto done;
    }
    if ((ts = now_ns()) == NULL)
        goto done;
    rid_text = PyUnicode_CheckExact(rid) ? Py_NewRef(rid) : PyObject_Str(rid);
    if (rid_text == NULL)
        goto done;
    PyObject *fields[8] = {phase, ts, rid_text, rank, prompt, output, PyTuple_GET_ITEM(top, 1), extra};
    if ((event = new_event(self, fields)) == NULL)
        goto done;
    untrack_plain(event, prompt, output);
    status = deliver(self, calls, PyTuple_GET_ITEM(top, 3), self->start_index_obj, event);
done:
    Py_XDECREF(calls);
    Py_XDECREF(rid);
    Py_XDECREF(cell);
    Py_XDECREF(rank);
    Py_XDECREF(top);
    Py_XDECREF(extra);
    Py_XDECREF(prompt);
    Py_XDECREF(output);
    Py_XDECREF(ts);
    Py_XDECREF(rid_text);
    Py_XDECREF(event);
    Py_XDECREF(phase);
    if (status < 0)
        return NULL;
    return call_run(call, args, kwargs);
}

/* obj.method(*args, **kwargs) of a TracedMethod whose wrapper is a probe here (_binding.c), the
 * call's own vector (obj, *args, kwnames): what the probe's vectorcall does with
 * (obj.<function>, obj, args, kwargs), without making them. A shut gate calls the function
 * with the same vector and makes nothing; an open one makes args and kwargs for the
 * extractors and the events, and still calls the function with the vector, not a bound
 * method. 1 and the result in *out when ``probe`` is such a probe, 0 when it is not. */
int
probe_call_method(PyObject *probe, PyObject *function, PyObject *const *argv, size_t nargsf, PyObject *kwnames,
                  PyObject **out)
{
    if (!Py_IS_TYPE(probe, &TracedType))
        return 0;
    Traced *self = (Traced *)probe;
    vectorcallfunc kind = self->vectorcall;
    int open = kind == request_vectorcall ? level_on(self) : gate(self);
    if (open <= 0) {
        *out = open < 0 ? NULL : PyObject_Vectorcall(function, argv, nargsf, kwnames);
        return 1;
    }
    PyObject *args, *kwargs; /* for the extractors and the events: the call itself takes the vector */
    if (vector_args(argv, PyVectorcall_NARGS(nargsf), kwnames, &args, &kwargs) < 0) { /* 1 or more: checked */
        *out = NULL;
        return 1;
    }
    Call call = {NULL, function, argv, nargsf, kwnames};
    *out = kind == traced_vectorcall ? traced_open(self, argv[0], args, kwargs, &call)
           : kind == kept_vectorcall ? kept_open(self, argv[0], args, kwargs, &call)
                                     : request_open(self, argv[0], args, kwargs, &call);
    Py_DECREF(args);
    Py_DECREF(kwargs);
    return 1;
}

/* request_traced(...): a request probe's traced call (the C form of _hotpath.REQUEST_TEMPLATE). */
static PyObject *
request_traced(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"phase", "level", "request_index", "event_type", "calls_of", "count_error",
                               "when", "request_id", "prompt_tokens", "output_tokens", "rank_keys",
                               "attrs_mode", "attrs", "aborted", "helpers", NULL};
    PyObject *phase, *event_type, *calls_of, *count_error, *when, *rid, *prompt, *output, *rank_keys, *attrs;
    PyObject *aborted, *helpers;
    long level;
    Py_ssize_t index;
    int attrs_mode;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UlnO!O!OOOOOO!iOO!O!:request_traced", keywords, &phase, &level,
                                     &index, &PyType_Type, &event_type, &PyList_Type, &calls_of, &count_error,
                                     &when, &rid, &prompt, &output, &PyTuple_Type, &rank_keys, &attrs_mode,
                                     &attrs, &PyFrozenSet_Type, &aborted, &PyDict_Type, &helpers))
        return NULL;
    PyTypeObject *event = (PyTypeObject *)event_type;
    if (!PyType_IsSubtype(event, &PyTuple_Type) || event->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "event_type %R is not a tuple type without fields of its own", event_type);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(rank_keys); i++) {
        PyObject *pair = PyTuple_GET_ITEM(rank_keys, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyCallable_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "rank_keys are (key, extractor) pairs");
            return NULL;
        }
    }
    Traced *self = (Traced *)TracedType.tp_alloc(&TracedType, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = request_vectorcall;
    self->n_fields = 8;
    self->level = level;
    self->start_index = self->end_index = index;
    self->name = Py_NewRef(phase);
    self->phase = Py_NewRef(phase);
    self->kind = PyUnicode_FromString("request");
    self->event_type = Py_NewRef(event_type);
    self->calls_of = Py_NewRef(calls_of);
    self->count_error = Py_NewRef(count_error);
    self->when = Py_NewRef(when);
    self->rank_keys = Py_NewRef(rank_keys);
    self->aborted = Py_NewRef(aborted);
    self->attrs_mode = attrs_mode;
    if (self->kind == NULL || (self->start_index_obj = PyLong_FromSsize_t(index)) == NULL ||
        (self->level_state = helper(helpers, "LEVEL")) == NULL ||
        (self->cell_or_none = helper(helpers, "_cell_or_none")) == NULL ||
        (self->context_cell = helper(helpers, "_context_cell")) == NULL ||
        (self->current_with_epoch = helper(helpers, "current_with_epoch")) == NULL ||
        (self->with_overrides = helper(helpers, "with_overrides")) == NULL ||
        (self->rank_epoch = helper(helpers, "rank_epoch")) == NULL ||
        context_var_behind(self->cell_or_none, &self->context_var) < 0)
        goto error;
    find_active_slot(self);
    if (!PyList_Check(self->rank_epoch) || PyList_GET_SIZE(self->rank_epoch) != 1) {
        PyErr_SetString(PyExc_TypeError, "rank_epoch is a one-item list");
        goto error;
    }
    if (extractor_init(&self->request_id, rid) < 0 || self->request_id.fallback == NULL ||
        extractor_init(&self->mb, prompt) < 0 || extractor_init(&self->size, output) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a request probe needs a request_id extractor");
        goto error;
    }
    if (attrs_init(self, attrs_mode, attrs, helpers) < 0)
        goto error;
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static PyObject *
traced_repr(Traced *self)
{
    return PyUnicode_FromFormat("<sched-trace probe %R (C hot path)>", self->name);
}

static PyMemberDef traced_members[] = {
    {"name", T_OBJECT, offsetof(Traced, name), READONLY, "the probe's stage or batch name"},
    {NULL},
};

static PyTypeObject TracedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sched_trace._speedups.Traced",
    .tp_doc = "A stage or batch probe's traced call: (wrapped, instance, args, kwargs) -> result "
              "(the C form of sched_trace._hotpath.TEMPLATE).",
    .tp_basicsize = sizeof(Traced),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = traced_new,
    .tp_dealloc = (destructor)traced_dealloc,
    .tp_traverse = (traverseproc)traced_traverse,
    .tp_clear = (inquiry)traced_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Traced, vectorcall),
    .tp_repr = (reprfunc)traced_repr,
    .tp_members = traced_members,
};

/* --- the built-in exporters' hook: an event into their buffer -------------- */

/* recorder.BackgroundExporter.append without its Python frame, for the common case:
 * the exporter thread runs and the buffer has room. Anything else (the first event,
 * which starts the thread; a full buffer, whose drop is counted and marked; a buffer
 * whose slots are not where they were) goes to that Python method, which stays the
 * reference. Not atomic, as the Python method is not: one scheduler thread appends. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *buffer;          /* the EventBuffer (slots capacity and _items) */
    PyObject *slow;            /* the Python append, bound to its BackgroundExporter */
    PyTypeObject *buffer_type; /* borrowed, held by buffer */
    Py_ssize_t capacity_offset, items_offset; /* 0: not slots, every event takes the Python path */
    PyTypeObject *items_type;  /* the type of the buffer's _items when made (held) */
    PyObject *items_append;    /* that type's ``append`` (a method descriptor: no lookup per event) */
    char started;              /* the exporter thread runs (BackgroundExporter keeps it in step) */
} Appender;

static PyTypeObject AppenderType;

/* The buffer's items while the exporter thread runs and they have room (borrowed), else
 * NULL, and the Python path decides (it starts the thread, drops and counts, or says what
 * is wrong). ``ring_only``: only items that are a Ring, which can take a record. */
static PyObject *
room_in(Appender *self, int ring_only)
{
    if (!self->started || self->items_offset <= 0 || Py_TYPE(self->buffer) != self->buffer_type)
        return NULL;
    PyObject *capacity = *(PyObject **)((char *)self->buffer + self->capacity_offset);
    PyObject *items = *(PyObject **)((char *)self->buffer + self->items_offset);
    if (capacity == NULL || items == NULL || !PyLong_CheckExact(capacity))
        return NULL;
    Py_ssize_t held = ring_held(items);
    if (held < 0 && (ring_only || (held = PyObject_Size(items)) < 0)) {
        PyErr_Clear();
        return NULL;
    }
    int overflow;
    long long limit = PyLong_AsLongLongAndOverflow(capacity, &overflow);
    return !overflow && held < limit ? items : NULL;
}

static PyObject *
appender_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Appender *self = (Appender *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "append(event) takes one positional argument");
        return NULL;
    }
    PyObject *items = room_in(self, 0);
    if (items != NULL) {
        PyObject *call[2] = {items, argv[0]};
        Py_INCREF(items); /* the buffer could let go of it during the call */
        PyObject *done = Py_TYPE(items) == self->items_type
                             ? PyObject_Vectorcall(self->items_append, call, 2, NULL)
                             : PyObject_VectorcallMethod(str_append, call, 2, NULL);
        Py_DECREF(items);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
        Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(self->slow, argv, 1, NULL);
}

/* ``hook``'s buffer when a probe's event can go into it as a record: an Appender whose
 * exporter thread runs, whose buffer's items are a Ring with room (borrowed); else NULL,
 * and the hook is called with the event (its checks, its drop counting). */
static PyObject *
appender_ring(PyObject *hook)
{
    return Py_IS_TYPE(hook, &AppenderType) ? room_in((Appender *)hook, 1) : NULL;
}

static PyObject *
appender_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "slow", NULL};
    PyObject *buffer, *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:Appender", kwlist, &buffer, &slow))
        return NULL;
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "Appender(buffer, slow): slow is the Python append, a callable");
        return NULL;
    }
    Appender *self = PyObject_GC_New(Appender, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = appender_vectorcall;
    self->buffer = Py_NewRef(buffer);
    self->slow = Py_NewRef(slow);
    self->buffer_type = Py_TYPE(buffer);
    self->capacity_offset = slot_offset(self->buffer_type, str_capacity);
    self->items_offset = slot_offset(self->buffer_type, str_items);
    if (self->capacity_offset == 0)
        self->items_offset = 0;
    self->items_type = NULL;
    self->items_append = NULL;
    PyObject *items = self->items_offset > 0 ? *(PyObject **)((char *)buffer + self->items_offset) : NULL;
    if (items != NULL) {
        PyObject *append = _PyType_Lookup(Py_TYPE(items), str_append); /* borrowed */
        if (append != NULL && Py_IS_TYPE(append, &PyMethodDescr_Type)) {
            self->items_type = (PyTypeObject *)Py_NewRef(Py_TYPE(items));
            self->items_append = Py_NewRef(append);
        }
    }
    self->started = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
appender_traverse(Appender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->buffer);
    Py_VISIT(self->slow);
    Py_VISIT(self->items_type);
    Py_VISIT(self->items_append);
    return 0;
}

static int
appender_clear(Appender *self)
{
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->items_type);
    Py_CLEAR(self->items_append);
    return 0;
}

static void
appender_dealloc(Appender *self)
{
    PyObject_GC_UnTrack(self);
    appender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
appender_repr(Appender *self)
{
    return PyUnicode_FromFormat("<sched-trace buffer append of %R (C)>", self->slow);
}

static PyMemberDef appender_members[] = {
    {"started", T_BOOL, offsetof(Appender, started), 0,
     "the exporter thread runs: events go straight to the buffer while it has room"},
    {NULL},
};

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sched_trace._speedups.Appender",
    .tp_doc = "Appender(buffer, slow): a BackgroundExporter's append(event) in C; "
              "slow, its Python append, takes what the C path does not.",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = appender_new,
    .tp_dealloc = (destructor)appender_dealloc,
    .tp_traverse = (traverseproc)appender_traverse,
    .tp_clear = (inquiry)appender_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Appender, vectorcall),
    .tp_repr = (reprfunc)appender_repr,
    .tp_members = appender_members,
};

static PyMethodDef speedups_methods[] = {
    {"request_traced", (PyCFunction)(void (*)(void))request_traced, METH_VARARGS | METH_KEYWORDS,
     "A request probe's traced call: the C form of sched_trace._hotpath.REQUEST_TEMPLATE."},
    {"set_clock_offset", set_clock_offset, METH_O,
     "Set the offset (ns) the hot path adds to the monotonic clock (sched_trace._clock's)."},
    {NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_methods = speedups_methods,
    .m_name = "sched_trace._speedups",
    .m_doc = "The C form of a stage or batch probe's hot path (sched_trace._hotpath).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if ((str_active = PyUnicode_InternFromString("active")) == NULL ||
        (str_append = PyUnicode_InternFromString("append")) == NULL ||
        (str_is_compiling_flag = PyUnicode_InternFromString("_is_compiling_flag")) == NULL ||
        (str_capacity = PyUnicode_InternFromString("capacity")) == NULL ||
        (str_items = PyUnicode_InternFromString("_items")) == NULL)
        return NULL;
    if (PyType_Ready(&TracedType) < 0 || PyType_Ready(&AppenderType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Traced", (PyObject *)&TracedType) < 0 ||
        PyModule_AddObjectRef(module, "Appender", (PyObject *)&AppenderType) < 0 || binding_init(module) < 0 ||
        conditions_init(module) < 0 || encode_init(module) < 0 || ring_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
