/* sched_trace._speedups, part two: binding a traced method to its instance in C.
 *
 * ``obj.method`` on a class whose ``method`` sched-trace wraps goes through the wrapper's
 * ``__get__``. wrapt's makes a BoundFunctionWrapper there: seven fields acquired, a
 * Python-level type called with seven arguments (about 450 ns a call on this machine,
 * more than the traced call itself, and inside an engine step for every ``self.x()``).
 * ``FastBinding`` is wrapt's FunctionWrapper with one slot changed: where the wrapper
 * carries a ``TracedMethod`` (a plain function with its traced call, which
 * sched_trace._instrument.Traced makes when the C hot path is on), ``obj.method`` is an
 * ordinary bound method of it, as ``obj.method`` of the undecorated function is a bound
 * method of that function. Calling it makes what wrapt would pass the wrapper:
 * ``wrapper(bound original, obj, args, kwargs)``, or, where the wrapper is a probe of
 * _speedups.c, calls the probe with the call's own vector (``probe_call_method``: a shut
 * gate calls the original with it and makes nothing). Everything else (access through
 * the class, classmethods, staticmethods, a wrapper stacked on another, no TracedMethod)
 * is wrapt's own binding, unchanged; undo and stacking stay wrapt's too.
 *
 * ``instrument()`` puts a TracedMethod in the class itself for a plain method
 * (sched_trace._instrument.traced_method): a method descriptor, as a function is, so the
 * interpreter's specialized ``self.method()`` loads it without binding (on 3.11 it does
 * for a function with plain parameters and for a method descriptor, never for a wrapt
 * proxy or a function taking ``*args``). Through the class it is itself; its attributes
 * are its function's, read and written.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *function; /* the original, a plain function */
    PyObject *wrapper;  /* wrapper(wrapped, instance, args, kwargs): the probe's traced call */
    PyObject *weakreflist;
} TracedMethod;

static PyTypeObject TracedMethodType;
/* _speedups.c: the call through a probe of its own, from the call's vector (1), or 0 when the
 * wrapper is some other callable. */
int probe_call_method(PyObject *probe, PyObject *function, PyObject *const *argv, size_t nargsf, PyObject *kwnames,
                      PyObject **out);
/* _speedups.c: the call's vector (instance, *args, kwnames) as wrapt passes it, args and kwargs. */
int vector_args(PyObject *const *argv, Py_ssize_t nargs, PyObject *kwnames, PyObject **args, PyObject **kwargs);
static PyObject *str_self_method, *str_wrapped, *str_doc, *str_class, *str_dynamo_inline;
static descrgetfunc wrapt_descr_get; /* wrapt.FunctionWrapper's own binding */

/* obj.method(*args, **kwargs) arrives as (obj, *args): wrapper(obj.<original>, obj, args, kwargs), as
 * wrapt's binding would call it; for a probe of sched-trace's own, the same call made from the
 * vector itself (_speedups.c, probe_call_method). */
static PyObject *
traced_method_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    TracedMethod *self = (TracedMethod *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) /* no instance: the function says what is missing, as it would unwrapped */
        return PyObject_Vectorcall(self->function, argv, nargsf, kwnames);
    PyObject *instance = argv[0], *result = NULL;
    if (probe_call_method(self->wrapper, self->function, argv, nargsf, kwnames, &result))
        return result;
    PyObject *args = NULL, *kwargs = NULL, *bound = PyMethod_New(self->function, instance);
    if (bound == NULL || vector_args(argv, nargs, kwnames, &args, &kwargs) < 0)
        goto done;
    PyObject *call[4] = {bound, instance, args, kwargs};
    result = PyObject_Vectorcall(self->wrapper, call, 4, NULL);
done:
    Py_XDECREF(bound);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    return result;
}

static PyObject *
traced_method_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"function", "wrapper", NULL};
    PyObject *function, *wrapper;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:TracedMethod", kwlist, &function, &wrapper))
        return NULL;
    if (!PyFunction_Check(function) || !PyCallable_Check(wrapper)) {
        PyErr_SetString(PyExc_TypeError, "TracedMethod(function, wrapper): a plain function and its traced call, "
                                         "wrapper(wrapped, instance, args, kwargs)");
        return NULL;
    }
    TracedMethod *self = PyObject_GC_New(TracedMethod, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = traced_method_vectorcall;
    self->function = Py_NewRef(function);
    self->wrapper = Py_NewRef(wrapper);
    self->weakreflist = NULL;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* What a function answers (__name__, __qualname__, __module__, __doc__, __code__, ...), it
 * answers: a bound method reads them from its __func__, and so do inspect, pickle and repr.
 * __wrapped__ is the function (inspect.signature follows it); so is _torchdynamo_inline (what
 * torch.compile traces in its place: torch's convention for a function's stand-in), and its
 * __class__ is the function's, so isinstance(x, FunctionType) holds, as for wrapt's proxies. */
static PyObject *
traced_method_getattro(PyObject *op, PyObject *name)
{
    TracedMethod *self = (TracedMethod *)op;
    if (PyUnicode_Check(name)) {
        if (PyUnicode_Compare(name, str_wrapped) == 0 || PyUnicode_Compare(name, str_dynamo_inline) == 0)
            return Py_NewRef(self->function);
        if (PyUnicode_Compare(name, str_class) == 0) /* isinstance(x, FunctionType), as wrapt's proxy answers */
            return Py_NewRef((PyObject *)Py_TYPE(self->function));
        if (PyUnicode_Compare(name, str_doc) == 0)
            return PyObject_GetAttr(self->function, name);
    }
    PyObject *found = PyObject_GenericGetAttr(op, name);
    if (found != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return found;
    PyErr_Clear();
    return PyObject_GetAttr(self->function, name);
}

static int
traced_method_traverse(TracedMethod *self, visitproc visit, void *arg)
{
    Py_VISIT(self->function);
    Py_VISIT(self->wrapper);
    return 0;
}

static int
traced_method_clear(TracedMethod *self)
{
    Py_CLEAR(self->function);
    Py_CLEAR(self->wrapper);
    return 0;
}

static void
traced_method_dealloc(TracedMethod *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    traced_method_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An attribute set or deleted on it is set on or deleted from its function, where it reads
 * them (as wrapt's proxy forwards them to what it wraps). */
static int
traced_method_setattro(PyObject *op, PyObject *name, PyObject *value)
{
    return PyObject_SetAttr(((TracedMethod *)op)->function, name, value);
}

/* Class.method is the TracedMethod itself; obj.method a bound method of it, as of a function. */
static PyObject *
traced_method_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* Pickled by reference, as its function is: pickle finds module.qualname and checks that it is this. */
static PyObject *
traced_method_reduce(TracedMethod *self, PyObject *Py_UNUSED(ignored))
{
    return PyObject_GetAttrString(self->function, "__qualname__");
}

static PyMethodDef traced_method_methods[] = {
    {"__reduce__", (PyCFunction)traced_method_reduce, METH_NOARGS, "Pickled by reference: its qualified name."},
    {NULL},
};

static PyObject *
traced_method_repr(TracedMethod *self)
{
    return PyUnicode_FromFormat("<sched-trace traced method %R (C)>", self->function);
}

static PyTypeObject TracedMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sched_trace._speedups.TracedMethod",
    .tp_doc = "TracedMethod(function, wrapper): a traced method, in its class (instrument()) or as the "
              "__func__ of a decorated method bound to its instance; calling it with (instance, *args) calls "
              "wrapper(bound function, instance, args, kwargs), or a probe of sched-trace's with the call itself.",
    .tp_basicsize = sizeof(TracedMethod),
    /* A method descriptor (as a function is): the interpreter's specialized ``self.method()``
     * loads it without binding and calls it with the instance first, through vectorcall. */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_IMMUTABLETYPE,
    .tp_descr_get = traced_method_descr_get,
    .tp_methods = traced_method_methods,
    .tp_new = traced_method_new,
    .tp_dealloc = (destructor)traced_method_dealloc,
    .tp_traverse = (traverseproc)traced_method_traverse,
    .tp_clear = (inquiry)traced_method_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(TracedMethod, vectorcall),
    .tp_getattro = traced_method_getattro,
    .tp_setattro = traced_method_setattro,
    .tp_weaklistoffset = offsetof(TracedMethod, weakreflist),
    .tp_repr = (reprfunc)traced_method_repr,
};

/* FastBinding.__get__: a bound method of the wrapper's TracedMethod for an instance; wrapt's
 * binding for everything else. The TracedMethod sits in the wrapper's own __dict__ (wrapt
 * keeps ``_self_`` attributes there). */
static PyObject *
fast_binding_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj != NULL && obj != Py_None) {
        PyObject *dict = PyObject_GenericGetDict(self, NULL);
        if (dict == NULL)
            return NULL;
        PyObject *method = PyDict_GetItemWithError(dict, str_self_method); /* borrowed, held by dict */
        if (method != NULL && Py_IS_TYPE(method, &TracedMethodType)) {
            PyObject *bound = PyMethod_New(method, obj);
            Py_DECREF(dict);
            return bound;
        }
        Py_DECREF(dict);
        if (PyErr_Occurred())
            return NULL;
    }
    return wrapt_descr_get(self, obj, type);
}

/* fast_binding(wrapt.FunctionWrapper): its subclass whose __get__ is fast_binding_get. */
static PyObject *
fast_binding(PyObject *module, PyObject *base)
{
    if (!PyType_Check(base) || ((PyTypeObject *)base)->tp_descr_get == NULL ||
        ((PyTypeObject *)base)->tp_dictoffset == 0) {
        PyErr_SetString(PyExc_TypeError, "fast_binding(base): base is wrapt's FunctionWrapper (C), "
                                         "a descriptor whose instances have a __dict__");
        return NULL;
    }
    descrgetfunc get = ((PyTypeObject *)base)->tp_descr_get;
    if (get == fast_binding_get || (wrapt_descr_get != NULL && get != wrapt_descr_get)) {
        PyErr_SetString(PyExc_TypeError, "fast_binding(base): one base, wrapt's FunctionWrapper, once binding");
        return NULL;
    }
    wrapt_descr_get = get;
    PyType_Slot slots[] = {
        {Py_tp_descr_get, fast_binding_get},
        {Py_tp_traverse, ((PyTypeObject *)base)->tp_traverse}, /* no fields of its own: wrapt's */
        {Py_tp_clear, ((PyTypeObject *)base)->tp_clear},
        {Py_tp_doc, "wrapt's FunctionWrapper; obj.method is a bound method of its TracedMethod when it has one."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "sched_trace._speedups.FastBinding",
        .basicsize = 0,
        .itemsize = 0,
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    return PyType_FromSpecWithBases(&spec, base);
}

static PyMethodDef binding_methods[] = {
    {"fast_binding", fast_binding, METH_O,
     "fast_binding(wrapt.FunctionWrapper): its subclass whose instances bind to an instance as a bound method "
     "of their _self_method (a TracedMethod), when they have one."},
    {NULL},
};

/* Called by PyInit__speedups: the types and functions above, added to the module. */
int
binding_init(PyObject *module)
{
    if ((str_self_method = PyUnicode_InternFromString("_self_method")) == NULL ||
        (str_wrapped = PyUnicode_InternFromString("__wrapped__")) == NULL ||
        (str_doc = PyUnicode_InternFromString("__doc__")) == NULL ||
        (str_class = PyUnicode_InternFromString("__class__")) == NULL ||
        (str_dynamo_inline = PyUnicode_InternFromString("_torchdynamo_inline")) == NULL)
        return -1;
    if (PyType_Ready(&TracedMethodType) < 0 ||
        PyModule_AddObjectRef(module, "TracedMethod", (PyObject *)&TracedMethodType) < 0 ||
        PyModule_AddFunctions(module, binding_methods) < 0)
        return -1;
    return 0;
}
