/* sched_trace._speedups.Ring: an exporter's buffer that holds a span's events as records.
 *
 * In a real engine, what a traced call costs the scheduler thread is mostly cold memory:
 * every object it makes, each event a 12-field tuple linked into the collector's list,
 * its two times two ints. A BackgroundExporter's buffer is a Ring when _speedups is
 * built, and a stage or batch probe's event whose only listeners are such buffers is
 * written into each as a record: the probe that made it, the objects the event would
 * refer to anyway (rank, micro-batch, batch id, batch size, attributes, error, span ids,
 * all made or held already), the two times as C integers. No event object is made on
 * the scheduler thread. The exporter thread makes it when it takes the record
 * (popleft): the very tuple the probe would have made (``span_event`` in _speedups.c),
 * warm, on its own thread, where it is freed too once exported.
 *
 * Anything else appended (an event made elsewhere: a request probe's, a drop marker, the
 * Python hot path's) is held as it is; records and objects keep one order. The ring grows
 * by doubling (the buffer's capacity is the bound, checked by whoever appends, as for a
 * deque) and gives its memory back when a drain empties a large one. It offers what
 * EventBuffer asks of a deque: append, popleft, len, clear and iteration (copies).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* _speedups.c: the event a stage or batch probe makes of these fields (a new reference). */
PyObject *span_event(PyObject *probe, long long start_ns, long long end_ns, int ended, PyObject *const *refs);

enum { R_RANK, R_MB, R_BATCH_ID, R_SIZE, R_EXTRA, R_ERROR, R_SPAN_ID, R_PARENT, N_REFS };

typedef struct {
    PyObject *head;          /* a record: the probe; else the object appended */
    PyObject *refs[N_REFS];  /* a record's objects (NULL for an object) */
    long long start_ns, end_ns;
    char record, ended;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t size, first, count; /* allocated, where the oldest is, how many are held */
} Ring;

PyTypeObject RingType;

#define RING_FIRST 256          /* slots at the first append */
#define RING_KEEP (1 << 16)     /* a larger ring emptied by a drain gives its memory back */

static int
ring_grow(Ring *self)
{
    Py_ssize_t size = self->size ? self->size * 2 : RING_FIRST;
    if ((size_t)size > PY_SSIZE_T_MAX / sizeof(Slot)) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *slots = PyMem_Malloc((size_t)size * sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* unwrap: the oldest first */
    Py_ssize_t tail = self->size - self->first;
    if (self->count > 0) {
        Py_ssize_t part = self->count < tail ? self->count : tail;
        memcpy(slots, self->slots + self->first, (size_t)part * sizeof(Slot));
        memcpy(slots + part, self->slots, (size_t)(self->count - part) * sizeof(Slot));
    }
    PyMem_Free(self->slots);
    self->slots = slots;
    self->size = size;
    self->first = 0;
    return 0;
}

/* The next free slot (grown if need be), or NULL with an error set. */
static Slot *
ring_next(Ring *self)
{
    if (self->count == self->size && ring_grow(self) < 0)
        return NULL;
    Py_ssize_t at = self->first + self->count;
    if (at >= self->size)
        at -= self->size;
    return &self->slots[at];
}

static void
slot_clear(Slot *slot)
{
    Py_CLEAR(slot->head);
    if (slot->record)
        for (int i = 0; i < N_REFS; i++)
            Py_CLEAR(slot->refs[i]);
}

/* A span's event as a record (the probe's fields, its times). ``refs``: rank, mb,
 * batch_id, size, extra, error, span_id, parent (borrowed; held here). */
int
ring_push_span(PyObject *ring, PyObject *probe, long long start_ns, long long end_ns, int ended,
               PyObject *const *refs)
{
    Ring *self = (Ring *)ring;
    Slot *slot = ring_next(self);
    if (slot == NULL)
        return -1;
    slot->head = Py_NewRef(probe);
    for (int i = 0; i < N_REFS; i++)
        slot->refs[i] = Py_NewRef(refs[i]);
    slot->start_ns = start_ns;
    slot->end_ns = end_ns;
    slot->record = 1;
    slot->ended = (char)ended;
    self->count++;
    return 0;
}

/* A ring of that type? Its length (>= 0), else -1. */
Py_ssize_t
ring_held(PyObject *items)
{
    return Py_IS_TYPE(items, &RingType) ? ((Ring *)items)->count : -1;
}

/* What a slot stands for (a new reference): the object appended, or the event made of the record. */
static PyObject *
slot_event(const Slot *slot)
{
    if (!slot->record)
        return Py_NewRef(slot->head);
    return span_event(slot->head, slot->start_ns, slot->end_ns, slot->ended, slot->refs);
}

static PyObject *
ring_append(Ring *self, PyObject *obj)
{
    Slot *slot = ring_next(self);
    if (slot == NULL)
        return NULL;
    slot->head = Py_NewRef(obj);
    slot->record = 0;
    self->count++;
    Py_RETURN_NONE;
}

static void
ring_release(Ring *self)
{
    PyMem_Free(self->slots);
    self->slots = NULL;
    self->size = self->first = 0;
}

static PyObject *
ring_popleft(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (self->count == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty ring");
        return NULL;
    }
    Slot slot = self->slots[self->first]; /* taken out before anything can run */
    if (++self->first == self->size)
        self->first = 0;
    if (--self->count == 0 && self->size > RING_KEEP)
        ring_release(self);
    PyObject *event = slot_event(&slot);
    slot_clear(&slot);
    return event;
}

static PyObject *
ring_clear_method(Ring *self, PyObject *Py_UNUSED(ignored))
{
    /* the slots are taken out first: a deallocation below may run code that appends */
    Slot *slots = self->slots;
    Py_ssize_t size = self->size, first = self->first, count = self->count;
    self->slots = NULL;
    self->size = self->first = self->count = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        slot_clear(&slots[(first + i) % size]);
    PyMem_Free(slots);
    Py_RETURN_NONE;
}

static Py_ssize_t
ring_length(Ring *self)
{
    return self->count;
}

/* iter(ring): over the events held now, made afresh (a copy: the ring keeps them). */
static PyObject *
ring_iter(Ring *self)
{
    PyObject *events = PyList_New(0);
    if (events == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        PyObject *event = slot_event(&self->slots[(self->first + i) % self->size]);
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
    self->slots = NULL;
    self->size = self->first = self->count = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
ring_traverse(Ring *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Slot *slot = &self->slots[(self->first + i) % self->size];
        Py_VISIT(slot->head);
        if (slot->record)
            for (int j = 0; j < N_REFS; j++)
                Py_VISIT(slot->refs[j]);
    }
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
    return PyUnicode_FromFormat("<sched-trace ring of %zd events>", self->count);
}

static PyMethodDef ring_methods[] = {
    {"append", (PyCFunction)ring_append, METH_O, "Hold an object (an event made elsewhere) after the rest."},
    {"popleft", (PyCFunction)ring_popleft, METH_NOARGS,
     "Take the oldest: the object appended, or the event made of a probe's record."},
    {"clear", (PyCFunction)ring_clear_method, METH_NOARGS, "Let go of everything held."},
    {NULL},
};

static PySequenceMethods ring_as_sequence = {
    .sq_length = (lenfunc)ring_length,
};

PyTypeObject RingType = {
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

int
ring_init(PyObject *module)
{
    if (PyType_Ready(&RingType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Ring", (PyObject *)&RingType);
}
