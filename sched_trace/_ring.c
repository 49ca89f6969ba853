/* sched_trace._speedups.Ring: an exporter's buffer that holds a span's events as records.
 *
 * In a real engine, what a traced call costs the scheduler thread is mostly cold memory:
 * every object it makes, each event a 12-field tuple linked into the collector's list,
 * its two times two ints. A BackgroundExporter's buffer is a Ring when _speedups is
 * built, and a stage or batch probe's event whose only listeners are such buffers is
 * written into each as a record: the probe that made it, the objects the event would
 * refer to anyway (rank, micro-batch, batch size, attributes, error, all made or held
 * already), its span, parent and batch ids and its two times as C integers. No event
 * object is made on the scheduler thread. A reader that takes events one by one
 * (popleft) gets the very tuple the probe would have made (``span_event`` in
 * _speedups.c), made then, on its own thread.
 *
 * Anything else appended (an event made elsewhere: a request probe's, a drop marker, the
 * Python hot path's) is held as it is; records and objects keep one order. The ring is two
 * circular arrays: one pointer per event, in order (an object, or a mark that the next
 * record stands there), and the records (96 bytes each), so that an object costs what it
 * cost in a deque. Both grow by doubling (the buffer's capacity is the bound, checked by
 * whoever appends, as for a deque) and give their memory back when a drain empties a large
 * one. The ring offers what EventBuffer asks of a deque: append, popleft, len, clear and
 * iteration (copies).
 *
 * ``take(limit)`` moves the oldest out as a Taken batch, for an exporter thread whose
 * export reads it in C (an ExportProcessor's: codec.EventEncoder, ``_encode.c``): the
 * frame's encoder writes a record's fields straight from the record, so no event object
 * is made on either thread. A Taken batch is a sequence (len, indexing, iteration, ``+``
 * a list), whose items are made as they are asked for, for any other reader.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* _speedups.c: the event a stage or batch probe makes of these fields (a new reference). */
PyObject *span_event(PyObject *probe, long long start_ns, long long end_ns, int ended, PyObject *const *refs);

enum { R_RANK, R_MB, R_BATCH_ID, R_SIZE, R_EXTRA, R_ERROR, R_SPAN_ID, R_PARENT, N_REFS };

/* A record's ids (span, parent, batch) are held as C integers where they are ints, tagged
 * in their pointer's low bit (an object's address is even): the int objects stay the
 * scheduler thread's, freed there when the span ends (so its next allocations reuse warm
 * memory), and the exporter thread neither reads nor frees them, cold, for each record.
 * ``ring_tagged`` and ``ring_untag`` read them (_encode.c too). */
#define TAG_MAX ((long long)1 << 61)

static inline int
tag_id(PyObject *value, PyObject **into)
{
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow;
    long long id = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || id < 0 || id >= TAG_MAX) /* an exact int raises nothing here */
        return 0;
    *into = (PyObject *)(((uintptr_t)id << 1) | 1);
    return 1;
}

int
ring_tagged(PyObject *ref)
{
    return ((uintptr_t)ref & 1) != 0;
}

long long
ring_untag(PyObject *ref)
{
    return (long long)((uintptr_t)ref >> 1);
}

/* One event: a record (its probe, its objects, its times), or an object (``head``). */
typedef struct {
    PyObject *head;          /* a record: the probe; else the object appended */
    PyObject *refs[N_REFS];  /* a record's objects (not set for an object) */
    long long start_ns, end_ns;
    char record, ended;
} Slot;

/* A circular array of ``width``-byte items. */
typedef struct {
    char *items;
    Py_ssize_t size, first, count; /* allocated, where the oldest is, how many are held */
} Circle;

typedef struct {
    PyObject_HEAD
    Circle order;   /* PyObject *: each event in order, an object or RECORD */
    Circle records; /* Slot: the records, in the same order */
} Ring;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t count;
} Taken;

static PyTypeObject RingType, TakenType;

static char record_mark;
#define RECORD ((PyObject *)&record_mark) /* in ``order``: the next record stands here */

#define RING_FIRST 256          /* items at the first append */
#define RING_KEEP (1 << 16)     /* a larger circle emptied by a drain gives its memory back */

static void *
circle_at(const Circle *c, Py_ssize_t i, size_t width)
{
    Py_ssize_t at = c->first + i;
    if (at >= c->size)
        at -= c->size;
    return c->items + (size_t)at * width;
}

static int
circle_grow(Circle *c, size_t width)
{
    Py_ssize_t size = c->size ? c->size * 2 : RING_FIRST;
    if ((size_t)size > PY_SSIZE_T_MAX / width) {
        PyErr_NoMemory();
        return -1;
    }
    char *items = PyMem_Malloc((size_t)size * width);
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (c->count > 0) { /* unwrap: the oldest first */
        Py_ssize_t tail = c->size - c->first, part = c->count < tail ? c->count : tail;
        memcpy(items, c->items + (size_t)c->first * width, (size_t)part * width);
        memcpy(items + (size_t)part * width, c->items, (size_t)(c->count - part) * width);
    }
    PyMem_Free(c->items);
    c->items = items;
    c->size = size;
    c->first = 0;
    return 0;
}

/* The next free item (grown if need be, counted), or NULL with an error set. */
static void *
circle_push(Circle *c, size_t width)
{
    if (c->count == c->size && circle_grow(c, width) < 0)
        return NULL;
    void *item = circle_at(c, c->count, width);
    c->count++;
    return item;
}

/* The oldest, let go of (the caller took it): its memory too when a large circle empties. */
static void
circle_pop(Circle *c)
{
    if (++c->first == c->size)
        c->first = 0;
    if (--c->count == 0 && c->size > RING_KEEP) {
        PyMem_Free(c->items);
        c->items = NULL;
        c->size = c->first = 0;
    }
}

/* What a slot holds, to the collector (a traverse function's loop body). */
static int
slot_visit(const Slot *slot, visitproc visit, void *arg)
{
    Py_VISIT(slot->head);
    if (slot->record)
        for (int i = 0; i < N_REFS; i++)
            if (!ring_tagged(slot->refs[i]))
                Py_VISIT(slot->refs[i]);
    return 0;
}

#define Py_VISIT_SLOT(slot)                                 \
    do {                                                    \
        int visited = slot_visit((slot), visit, arg);       \
        if (visited)                                        \
            return visited;                                 \
    } while (0)

static void
slot_clear(Slot *slot)
{
    Py_CLEAR(slot->head);
    if (slot->record)
        for (int i = 0; i < N_REFS; i++) {
            if (ring_tagged(slot->refs[i]))
                slot->refs[i] = NULL;
            else
                Py_CLEAR(slot->refs[i]);
        }
}

/* The oldest event, moved out of the ring into ``slot`` (the ring holds at least one). */
static void
ring_pop(Ring *self, Slot *slot)
{
    PyObject *head = *(PyObject **)circle_at(&self->order, 0, sizeof(PyObject *));
    circle_pop(&self->order);
    if (head == RECORD) {
        *slot = *(Slot *)circle_at(&self->records, 0, sizeof(Slot));
        circle_pop(&self->records);
    }
    else {
        slot->head = head;
        slot->record = 0;
    }
}

/* A span's event as a record (the probe's fields, its times). ``refs``: rank, mb,
 * batch_id, size, extra, error, span_id, parent (borrowed; held here). */
int
ring_push_span(PyObject *ring, PyObject *probe, long long start_ns, long long end_ns, int ended,
               PyObject *const *refs)
{
    Ring *self = (Ring *)ring;
    if (self->order.count == self->order.size && circle_grow(&self->order, sizeof(PyObject *)) < 0)
        return -1;
    Slot *slot = circle_push(&self->records, sizeof(Slot));
    if (slot == NULL)
        return -1;
    *(PyObject **)circle_push(&self->order, sizeof(PyObject *)) = RECORD; /* room made above */
    slot->head = Py_NewRef(probe);
    for (int i = 0; i < N_REFS; i++)
        if (!((i == R_SPAN_ID || i == R_PARENT || i == R_BATCH_ID) && tag_id(refs[i], &slot->refs[i])))
            slot->refs[i] = Py_NewRef(refs[i]);
    slot->start_ns = start_ns;
    slot->end_ns = end_ns;
    slot->record = 1;
    slot->ended = (char)ended;
    return 0;
}

/* An object (an event made on this thread) after the rest. */
int
ring_push_object(PyObject *ring, PyObject *obj)
{
    PyObject **item = circle_push(&((Ring *)ring)->order, sizeof(PyObject *));
    if (item == NULL)
        return -1;
    *item = Py_NewRef(obj);
    return 0;
}

/* A ring of that type? Its length (>= 0), else -1. */
Py_ssize_t
ring_held(PyObject *items)
{
    return Py_IS_TYPE(items, &RingType) ? ((Ring *)items)->order.count : -1;
}

/* What a slot stands for (a new reference): the object appended, or the event made of the record. */
static PyObject *
slot_event(const Slot *slot)
{
    if (!slot->record)
        return Py_NewRef(slot->head);
    PyObject *refs[N_REFS], *event = NULL;
    int made = 0;
    for (; made < N_REFS; made++) {
        PyObject *ref = slot->refs[made];
        if ((refs[made] = ring_tagged(ref) ? PyLong_FromLongLong(ring_untag(ref)) : Py_NewRef(ref)) == NULL)
            break;
    }
    if (made == N_REFS)
        event = span_event(slot->head, slot->start_ns, slot->end_ns, slot->ended, refs);
    while (made-- > 0)
        Py_DECREF(refs[made]);
    return event;
}

static PyObject *
ring_append(Ring *self, PyObject *obj)
{
    if (ring_push_object((PyObject *)self, obj) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
ring_popleft(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (self->order.count == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty ring");
        return NULL;
    }
    Slot slot;
    ring_pop(self, &slot); /* taken out before anything can run */
    PyObject *event = slot_event(&slot);
    slot_clear(&slot);
    return event;
}

static PyObject *
ring_clear_method(Ring *self, PyObject *Py_UNUSED(ignored))
{
    /* everything is taken out first: a deallocation below may run code that appends */
    Circle order = self->order, records = self->records;
    self->order = self->records = (Circle){NULL, 0, 0, 0};
    for (Py_ssize_t i = 0; i < order.count; i++) {
        PyObject *head = *(PyObject **)circle_at(&order, i, sizeof(PyObject *));
        if (head != RECORD)
            Py_DECREF(head);
    }
    for (Py_ssize_t i = 0; i < records.count; i++)
        slot_clear(circle_at(&records, i, sizeof(Slot)));
    PyMem_Free(order.items);
    PyMem_Free(records.items);
    Py_RETURN_NONE;
}

static Py_ssize_t
ring_length(Ring *self)
{
    return self->order.count;
}

/* The ``i``-th held event as a slot (borrowed); ``*record`` the records before it, advanced. */
static Slot
ring_peek(Ring *self, Py_ssize_t i, Py_ssize_t *record)
{
    Slot slot;
    PyObject *head = *(PyObject **)circle_at(&self->order, i, sizeof(PyObject *));
    if (head == RECORD)
        slot = *(Slot *)circle_at(&self->records, (*record)++, sizeof(Slot));
    else {
        slot.head = head;
        slot.record = 0;
    }
    return slot;
}

/* iter(ring): over the events held now, made afresh (a copy: the ring keeps them). */
static PyObject *
ring_iter(Ring *self)
{
    PyObject *events = PyList_New(0);
    if (events == NULL)
        return NULL;
    Py_ssize_t record = 0;
    for (Py_ssize_t i = 0; i < self->order.count; i++) {
        Slot slot = ring_peek(self, i, &record);
        PyObject *event = slot_event(&slot);
        if (event == NULL || PyList_Append(events, event) < 0) {
            Py_XDECREF(event);
            Py_DECREF(events);
            return NULL;
        }
        Py_DECREF(event);
    }
    PyObject *iterator = PyObject_GetIter(events);
    Py_DECREF(events);
    return iterator;
}

static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Ring() takes no arguments");
        return NULL;
    }
    Ring *self = PyObject_GC_New(Ring, type);
    if (self == NULL)
        return NULL;
    self->order = self->records = (Circle){NULL, 0, 0, 0};
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
ring_traverse(Ring *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->order.count; i++) {
        PyObject *head = *(PyObject **)circle_at(&self->order, i, sizeof(PyObject *));
        if (head != RECORD)
            Py_VISIT(head);
    }
    for (Py_ssize_t i = 0; i < self->records.count; i++)
        Py_VISIT_SLOT((Slot *)circle_at(&self->records, i, sizeof(Slot)));
    return 0;
}

static int
ring_tp_clear(Ring *self)
{
    PyObject *done = ring_clear_method(self, NULL);
    Py_XDECREF(done);
    return 0;
}

static void
ring_dealloc(Ring *self)
{
    PyObject_GC_UnTrack(self);
    ring_tp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
ring_repr(Ring *self)
{
    return PyUnicode_FromFormat("<sched-trace ring of %zd events>", self->order.count);
}

static PyObject *
ring_take(Ring *self, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t count = limit < 0 ? 0 : limit < self->order.count ? limit : self->order.count;
    Taken *taken = PyObject_GC_New(Taken, &TakenType);
    if (taken == NULL)
        return NULL;
    taken->slots = NULL;
    taken->count = 0;
    if (count > 0 && (taken->slots = PyMem_Malloc((size_t)count * sizeof(Slot))) == NULL) {
        Py_DECREF(taken);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) /* moved: the batch holds what the ring held */
        ring_pop(self, &taken->slots[i]);
    taken->count = count;
    PyObject_GC_Track(taken);
    return (PyObject *)taken;
}

static PyMethodDef ring_methods[] = {
    {"append", (PyCFunction)ring_append, METH_O, "Hold an object (an event made elsewhere) after the rest."},
    {"popleft", (PyCFunction)ring_popleft, METH_NOARGS,
     "Take the oldest: the object appended, or the event made of a probe's record."},
    {"clear", (PyCFunction)ring_clear_method, METH_NOARGS, "Let go of everything held."},
    {"take", (PyCFunction)ring_take, METH_O, "take(limit): the oldest, up to limit of them, moved out as a Taken batch."},
    {NULL},
};

static PySequenceMethods ring_as_sequence = {
    .sq_length = (lenfunc)ring_length,
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sched_trace._speedups.Ring",
    .tp_doc = "Ring(): a BackgroundExporter's buffer of events in C; a probe's events are held as "
              "records and made into events when taken (popleft).",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = ring_new,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_traverse = (traverseproc)ring_traverse,
    .tp_clear = (inquiry)ring_tp_clear,
    .tp_iter = (getiterfunc)ring_iter,
    .tp_repr = (reprfunc)ring_repr,
    .tp_methods = ring_methods,
    .tp_as_sequence = &ring_as_sequence,
};

/* --- a batch taken out of a ring ----------------------------------------------------- */

/* For _encode.c: how many a Taken batch holds (-1: not one). */
Py_ssize_t
taken_size(PyObject *batch)
{
    return Py_IS_TYPE(batch, &TakenType) ? ((Taken *)batch)->count : -1;
}

/* For _encode.c: item ``i`` of a Taken batch, borrowed: an object (``*object``), or a
 * record (``*object`` NULL: its probe, its objects, its times; an id among the objects may
 * be tagged: ``ring_tagged``). */
void
taken_item(PyObject *batch, Py_ssize_t i, PyObject **object, PyObject **probe, PyObject *const **refs,
           long long *start_ns, long long *end_ns, int *ended)
{
    const Slot *slot = &((Taken *)batch)->slots[i];
    *object = slot->record ? NULL : slot->head;
    *probe = slot->record ? slot->head : NULL;
    *refs = slot->refs;
    *start_ns = slot->start_ns;
    *end_ns = slot->end_ns;
    *ended = slot->ended;
}

static Py_ssize_t
taken_length(Taken *self)
{
    return self->count;
}

static PyObject *
taken_getitem(Taken *self, Py_ssize_t i)
{
    if (i < 0 || i >= self->count) {
        PyErr_SetString(PyExc_IndexError, "taken batch index out of range");
        return NULL;
    }
    return slot_event(&self->slots[i]);
}

/* batch + other: a list of the batch's events, then other's. */
static PyObject *
taken_concat(Taken *self, PyObject *other)
{
    PyObject *events = PyList_New(self->count);
    if (events == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        PyObject *event = slot_event(&self->slots[i]);
        if (event == NULL) {
            Py_DECREF(events);
            return NULL;
        }
        PyList_SET_ITEM(events, i, event);
    }
    PyObject *more = PySequence_InPlaceConcat(events, other);
    Py_DECREF(events);
    return more;
}

static int
taken_traverse(Taken *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->count; i++)
        Py_VISIT_SLOT(&self->slots[i]);
    return 0;
}

static int
taken_clear(Taken *self)
{
    Slot *slots = self->slots;
    Py_ssize_t count = self->count;
    self->slots = NULL;
    self->count = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        slot_clear(&slots[i]);
    PyMem_Free(slots);
    return 0;
}

static void
taken_dealloc(Taken *self)
{
    PyObject_GC_UnTrack(self);
    taken_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
taken_repr(Taken *self)
{
    return PyUnicode_FromFormat("<sched-trace batch of %zd events taken from a ring>", self->count);
}

static PySequenceMethods taken_as_sequence = {
    .sq_length = (lenfunc)taken_length,
    .sq_concat = (binaryfunc)taken_concat,
    .sq_item = (ssizeargfunc)taken_getitem,
};

static PyTypeObject TakenType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sched_trace._speedups.Taken",
    .tp_doc = "A batch taken out of a Ring (Ring.take): a sequence whose events are made as they are "
              "asked for; the C frame encoder reads its records without making them.",
    .tp_basicsize = sizeof(Taken),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)taken_dealloc,
    .tp_traverse = (traverseproc)taken_traverse,
    .tp_clear = (inquiry)taken_clear,
    .tp_repr = (reprfunc)taken_repr,
    .tp_as_sequence = &taken_as_sequence,
};

int
ring_init(PyObject *module)
{
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&TakenType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Taken", (PyObject *)&TakenType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Ring", (PyObject *)&RingType);
}
