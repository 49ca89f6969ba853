/* sched_trace._speedups, part three: a condition (``when``, ``keep_if``, ``"EXPR if CONDITION"``)
 * decided in C.
 *
 * ``_conditions._condition`` compiles ``[not] VALUE [OP LITERAL]`` into a Python function,
 * ``holds(instance, args, kwargs, result=None)``, which stays the reference. Where the C hot
 * path is on, it hands the same plan to ``Condition``: the value read by its plan (the
 * return value, a positional argument or the instance, then attribute steps, then len()),
 * compared with the literal, negated, without a Python frame. Whatever the plan cannot
 * read (an argument passed by keyword, a missing attribute, ``self`` on an unbound call)
 * goes to ``holds``, which reads it again, counts it and answers; a comparison or truth
 * test that raises an Exception is false, as in ``holds``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

/* OP: none (the value's truth), or a comparison of the value with the literal */
enum { OP_TRUTH = 0, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IS, OP_IS_NOT, OP_IN };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *holds;     /* the Python condition: the reference, and the slow path */
    PyObject *steps;     /* tuple of attribute names after the root */
    PyObject *literal;
    Py_ssize_t position; /* the root's index in args when called unbound; -1: the instance */
    Py_ssize_t bound;    /* its index when called with an instance */
    int from_result, use_len, op, invert, negate;
} Condition;

static PyTypeObject ConditionType;
/* _speedups.c: a value by its plan, as extractors read theirs; the steps from a given root */
PyObject *plan_read(PyObject *instance, PyObject *args, Py_ssize_t position, Py_ssize_t bound, PyObject *steps,
                    int use_len);
PyObject *plan_steps(PyObject *value, PyObject *steps, int use_len);

/* The value by the plan (a new reference); NULL without an exception: the slow path. */
static PyObject *
plan_value(Condition *self, PyObject *const *argv, Py_ssize_t nargs)
{
    if (self->from_result)
        return plan_steps(Py_NewRef(nargs > 3 ? argv[3] : Py_None), self->steps, self->use_len);
    return plan_read(argv[0], argv[1], self->position, self->bound, self->steps, self->use_len);
}

/* 1 or 0: the comparison (or truth) of value; -1 when it raised something not an Exception. */
static int
decide(Condition *self, PyObject *value)
{
    int outcome;
    switch (self->op) {
    case OP_TRUTH:
        if (value == Py_None) /* unknown: neither it nor its negation holds */
            return 0;
        outcome = PyObject_IsTrue(value);
        break;
    case OP_IS:
        outcome = value == self->literal;
        break;
    case OP_IS_NOT:
        outcome = value != self->literal;
        break;
    case OP_IN:
        outcome = PySequence_Contains(self->literal, value);
        break;
    default: { /* the comparison's own answer, then its truth, as bool(operator.eq(value, literal)) */
        PyObject *answer = PyObject_RichCompare(value, self->literal,
                                                self->op == OP_EQ ? Py_EQ : self->op == OP_NE ? Py_NE :
                                                self->op == OP_LT ? Py_LT : self->op == OP_LE ? Py_LE :
                                                self->op == OP_GT ? Py_GT : Py_GE);
        outcome = answer == NULL ? -1 : PyObject_IsTrue(answer);
        Py_XDECREF(answer);
    }
    }
    if (outcome < 0) { /* None > 0, or no truth value: the condition does not hold */
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear();
        return 0;
    }
    outcome = outcome != self->invert;
    return self->negate ? !outcome : outcome;
}

/* condition(instance, args, kwargs[, result]) -> bool, as holds answers. */
static PyObject *
condition_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Condition *self = (Condition *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 3 || nargs > 4 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0))
        return PyObject_Vectorcall(self->holds, argv, nargsf, kwnames); /* holds says what is wrong */
    PyObject *value = plan_value(self, argv, nargs);
    if (value == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return NULL;
            PyErr_Clear();
        }
        return PyObject_Vectorcall(self->holds, argv, nargsf, NULL); /* it reads it again, and counts */
    }
    int outcome = decide(self, value);
    Py_DECREF(value);
    if (outcome < 0)
        return NULL;
    return PyBool_FromLong(outcome);
}

static PyObject *
condition_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"holds", "from_result", "position", "bound", "steps", "use_len", "op", "literal",
                             "invert", "negate", NULL};
    PyObject *holds, *steps, *literal;
    Py_ssize_t position, bound;
    int from_result, use_len, op_code, invert, negate;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OpnnO!piOpp:Condition", kwlist, &holds, &from_result,
                                     &position, &bound, &PyTuple_Type, &steps, &use_len, &op_code, &literal,
                                     &invert, &negate))
        return NULL;
    if (!PyCallable_Check(holds) || op_code < OP_TRUTH || op_code > OP_IN || position < -1 || bound < -1) {
        PyErr_SetString(PyExc_ValueError, "Condition(holds, ...): holds is the Python condition; op 0-9; "
                                          "position and bound -1 (the instance) or an index");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(steps); i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(steps, i))) {
            PyErr_SetString(PyExc_TypeError, "Condition: steps are attribute names");
            return NULL;
        }
    Condition *self = PyObject_GC_New(Condition, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = condition_vectorcall;
    self->holds = Py_NewRef(holds);
    self->steps = Py_NewRef(steps);
    self->literal = Py_NewRef(literal);
    self->position = position;
    self->bound = bound;
    self->from_result = from_result;
    self->use_len = use_len;
    self->op = op_code;
    self->invert = invert;
    self->negate = negate;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* What the Python condition answers (its ``spec``, ``__qualname__`` ...), it answers. */
static PyObject *
condition_getattro(PyObject *op, PyObject *name)
{
    PyObject *found = PyObject_GenericGetAttr(op, name);
    if (found != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return found;
    PyErr_Clear();
    return PyObject_GetAttr(((Condition *)op)->holds, name);
}

static int
condition_traverse(Condition *self, visitproc visit, void *arg)
{
    Py_VISIT(self->holds);
    Py_VISIT(self->steps);
    Py_VISIT(self->literal);
    return 0;
}

static int
condition_clear(Condition *self)
{
    Py_CLEAR(self->holds);
    Py_CLEAR(self->steps);
    Py_CLEAR(self->literal);
    return 0;
}

static void
condition_dealloc(Condition *self)
{
    PyObject_GC_UnTrack(self);
    condition_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
condition_repr(Condition *self)
{
    return PyUnicode_FromFormat("<sched-trace condition %R (C)>", self->holds);
}

static PyTypeObject ConditionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sched_trace._speedups.Condition",
    .tp_doc = "Condition(holds, from_result, position, bound, steps, use_len, op, literal, invert, negate): "
              "sched_trace._conditions's holds(instance, args, kwargs, result=None) decided by its plan in C.",
    .tp_basicsize = sizeof(Condition),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = condition_new,
    .tp_dealloc = (destructor)condition_dealloc,
    .tp_traverse = (traverseproc)condition_traverse,
    .tp_clear = (inquiry)condition_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Condition, vectorcall),
    .tp_getattro = condition_getattro,
    .tp_repr = (reprfunc)condition_repr,
};

/* Called by PyInit__speedups. */
int
conditions_init(PyObject *module)
{
    if (PyType_Ready(&ConditionType) < 0 ||
        PyModule_AddObjectRef(module, "Condition", (PyObject *)&ConditionType) < 0)
        return -1;
    return 0;
}
