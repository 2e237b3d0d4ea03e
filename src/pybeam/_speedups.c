/* pybeam._speedups: the hot path of a local message, compiled.
 *
 * What a message from one process to another on the same node costs is a
 * send, a receive, and a step of the receiver's task by the node's run queue.
 * In Python those are a few hundred bytecodes per hop; here they are plain C
 * around the one thing that must stay Python, the processes' own code.
 *
 * This module holds no state of its own: it reads and writes the __slots__ of
 * pybeam's Python classes (Process, Pid, ProcessTask, Wake, RunQueue) at the
 * offsets their member descriptors give, which setup() looks up once. The
 * Python code those classes carry (pybeam/scheduler.py, mailbox.py,
 * kernel.py) is the reference and the fallback: every function here does
 * exactly what its Python counterpart does, calls that very Python code for
 * anything but the common case, and the test suite runs against both
 * (PYBEAM_PURE_PYTHON=1 selects the Python code; see docs/runtime.md).
 *
 * Built by setup.py as an optional extension: a machine without a C compiler
 * gets the pure-Python runtime, which behaves the same, only slower.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

/* -- The classes' slots ---------------------------------------------------- */

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/* A slot's value, borrowed; an unset slot reads as None. */
static inline PyObject *
get(PyObject *o, Py_ssize_t off)
{
    PyObject *v = SLOT(o, off);
    return v != NULL ? v : Py_None;
}

static inline void
set(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    Py_INCREF(v);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

static int ready_scheduler = 0; /* setup_scheduler() done */
static int ready_kernel = 0;    /* setup_kernel() done */

/* Mailbox / Process */
static Py_ssize_t mb_queue, mb_waiter, mb_takes, mb_handed, mb_suspended_on;
static Py_ssize_t pr_node, pr_task, pr_coro, pr_reductions;
/* Pid */
static Py_ssize_t pid_proc;
/* ProcessTask */
static Py_ssize_t t_fut_waiter, t_wake, t_exc, t_must_cancel, t_cancel_message, t_proc, t_runq, t_context;
/* Wake */
static Py_ssize_t w_state, w_result, w_task, w_callbacks, w_blocking;
/* RunQueue */
static Py_ssize_t q_queue, q_scheduled, q_loop;

static PyTypeObject *PidType, *ProcessTaskType, *WakeType, *ProcessType, *RunQueueType;
static PyObject *IDLE, *PENDING, *DONE; /* a wake's states (small ints) */
static PyObject *CancelledError;
static PyObject *enter_task, *leave_task, *current_task; /* asyncio's */
static PyObject *future_done;                            /* asyncio.Future.done */
static PyObject *deque_append, *deque_popleft;
static PyTypeObject *DequeType;
static PyObject *current_process;                        /* the ContextVar */
static PyObject *send_py, *receive_py;                   /* kernel's Python send and receive */
static long budget;
static PyObject *ONE; /* 1, for a process's reductions */

static PyObject *s_ready, *s_put, *s_call_back, *s_park, *s_returned, *s_cancelled, *s_raised,
    *s_cancel_wait, *s_yielded, *s_call_soon, *s_run, *s_step, *s_give_back, *s_throw, *s_result;

static int
slot_offset(PyObject *cls, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL) {
        return -1;
    }
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)d)->d_member->type != Py_T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ attribute", cls, name);
        Py_DECREF(d);
        return -1;
    }
    *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    return 0;
}

static void
keep(PyObject **where, PyObject *v)
{
    Py_XINCREF(v);
    Py_XSETREF(*where, v);
}

static inline int
append(PyObject *q, PyObject *v)
{
    PyObject *args[2] = {q, v};
    PyObject *r = PyObject_Vectorcall(deque_append, args, 2, NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static inline PyObject *
popleft(PyObject *q)
{
    return PyObject_Vectorcall(deque_popleft, &q, 1, NULL);
}

/* The process the running code belongs to (new reference; None outside one). */
static inline PyObject *
this_process(void)
{
    PyObject *proc;
    if (PyContextVar_Get(current_process, Py_None, &proc) < 0) {
        return NULL;
    }
    if (proc != Py_None && !PyObject_TypeCheck(proc, ProcessType)) {
        Py_SETREF(proc, Py_NewRef(Py_None)); /* not ours to read: the Python code decides */
    }
    return proc;
}

/* -- Receiving: what receive() returns ----------------------------------- */

/* An awaitable with no frame: either the oldest message of a queue (taken
 * when it is first resumed, as the coroutine it replaces would), or the wake
 * the process's own task waits on, which it yields to the task's step and
 * whose message it returns when resumed. The compiled
 * pybeam.mailbox._waiting (and _pop_coro): see that generator for what a
 * cancellation does. */
typedef struct {
    PyObject_HEAD
    PyObject *wake;    /* NULL: the message is the queue's oldest */
    PyObject *mailbox;
    PyObject *queue;
    int state;         /* 0 not started, 1 waiting on the wake, 2 finished */
} Receiving;

static PyTypeObject ReceivingType;

static PyObject *
receiving_new(PyObject *wake, PyObject *mailbox, PyObject *queue)
{
    Receiving *r = PyObject_GC_New(Receiving, &ReceivingType);
    if (r == NULL) {
        return NULL;
    }
    r->wake = Py_XNewRef(wake);
    r->mailbox = Py_XNewRef(mailbox);
    r->queue = Py_XNewRef(queue);
    r->state = 0;
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

static int
receiving_clear(Receiving *r)
{
    Py_CLEAR(r->wake);
    Py_CLEAR(r->mailbox);
    Py_CLEAR(r->queue);
    r->state = 2; /* finished: nothing left to resume */
    return 0;
}

static int
receiving_traverse(Receiving *r, visitproc visit, void *arg)
{
    Py_VISIT(r->wake);
    Py_VISIT(r->mailbox);
    Py_VISIT(r->queue);
    return 0;
}

static void
receiving_dealloc(Receiving *r)
{
    PyObject_GC_UnTrack(r);
    receiving_clear(r);
    PyObject_GC_Del(r);
}

static PySendResult
receiving_am_send(Receiving *r, PyObject *arg, PyObject **result)
{
    (void)arg;
    if (r->state == 2) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited receive");
        *result = NULL;
        return PYGEN_ERROR;
    }
    PyObject *wake = r->wake;
    if (wake == NULL) {
        PyObject *q = r->queue;
        r->queue = NULL;
        r->state = 2;
        *result = popleft(q);
        Py_DECREF(q);
        return *result != NULL ? PYGEN_RETURN : PYGEN_ERROR;
    }
    if (r->state == 0 && get(wake, w_state) == PENDING) {
        /* What Future.__await__ does: tells the task to wait on it. (A
         * message handed over between receive() and its await has made the
         * wake done already: nothing to wait for, and nothing would wake it.) */
        set(wake, w_blocking, Py_True);
        r->state = 1;
        *result = Py_NewRef(wake);
        return PYGEN_NEXT;
    }
    Py_INCREF(wake); /* receiving_clear() below lets go of it */
    if (get(wake, w_state) == DONE) {
        PyObject *msg = Py_NewRef(get(wake, w_result));
        if (get(wake, w_callbacks) == Py_None) {
            /* Taken, and nobody else holds it: the next receive waits on it again. */
            set(wake, w_state, IDLE);
            set(wake, w_result, Py_None);
        }
        receiving_clear(r);
        Py_DECREF(wake);
        *result = msg;
        return PYGEN_RETURN;
    }
    /* Cancelled: result() raises. */
    receiving_clear(r);
    PyObject *v = PyObject_CallMethodNoArgs(wake, s_result);
    Py_DECREF(wake);
    *result = v;
    return v != NULL ? PYGEN_RETURN : PYGEN_ERROR;
}

static PyObject *
receiving_return(PySendResult status, PyObject *value)
{
    if (status == PYGEN_NEXT) {
        return value;
    }
    if (status == PYGEN_RETURN) {
        if (value == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
            if (e != NULL) {
                PyErr_SetObject(PyExc_StopIteration, e);
                Py_DECREF(e);
            }
        }
        Py_DECREF(value);
    }
    return NULL;
}

static PyObject *
receiving_iternext(Receiving *r)
{
    PyObject *value;
    PySendResult status = receiving_am_send(r, Py_None, &value);
    return receiving_return(status, value);
}

static PyObject *
receiving_send(Receiving *r, PyObject *arg)
{
    PyObject *value;
    PySendResult status = receiving_am_send(r, arg, &value);
    return receiving_return(status, value);
}

static PyObject *
receiving_throw(Receiving *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        if (tb != Py_None && PyException_SetTraceback(typ, tb) < 0) {
            return NULL;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
        return NULL;
    }
    if (r->state == 1 && PyErr_ExceptionMatches(CancelledError) && get(r->wake, w_state) == DONE) {
        /* Cancelled after a message was handed over, before it was taken:
         * it goes back to the mailbox, not lost. */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyObject *ok = PyObject_CallMethodOneArg(r->mailbox, s_give_back, r->wake);
        if (ok == NULL) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            receiving_clear(r);
            return NULL;
        }
        Py_DECREF(ok);
        set(r->wake, w_result, Py_None);
        PyErr_Restore(type, value, traceback);
    }
    receiving_clear(r);
    return NULL;
}

static PyObject *
receiving_close(Receiving *r, PyObject *Py_UNUSED(ignored))
{
    receiving_clear(r);
    Py_RETURN_NONE;
}

static PyObject *
receiving_await(Receiving *r)
{
    return Py_NewRef(r);
}

static PyMethodDef receiving_methods[] = {
    {"send", (PyCFunction)receiving_send, METH_O, "Resume the receive."},
    {"throw", (PyCFunction)(void (*)(void))receiving_throw, METH_FASTCALL, "Raise an exception in the receive."},
    {"close", (PyCFunction)receiving_close, METH_NOARGS, "Stop the receive."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods receiving_as_async = {
    .am_await = (unaryfunc)receiving_await,
    .am_send = (sendfunc)receiving_am_send,
};

static PyTypeObject ReceivingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pybeam._speedups.Receiving",
    .tp_doc = "A receive in progress: await it for the message.",
    .tp_basicsize = sizeof(Receiving),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)receiving_dealloc,
    .tp_traverse = (traverseproc)receiving_traverse,
    .tp_clear = (inquiry)receiving_clear,
    .tp_as_async = &receiving_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)receiving_iternext,
    .tp_methods = receiving_methods,
};

static int
need_scheduler(void)
{
    if (!ready_scheduler) {
        PyErr_SetString(PyExc_RuntimeError, "pybeam._speedups: setup_scheduler() was not called");
        return -1;
    }
    return 0;
}

static PyObject *
waiting(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "waiting(wake, mailbox)");
        return NULL;
    }
    if (need_scheduler() < 0) {
        return NULL;
    }
    if (!Py_IS_TYPE(args[0], WakeType)) {
        PyErr_Format(PyExc_TypeError, "waiting() takes a process's Wake, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    return receiving_new(args[0], args[1], NULL);
}

static PyObject *
popped(PyObject *module, PyObject *q)
{
    if (!PyObject_TypeCheck(q, DequeType)) {
        PyErr_Format(PyExc_TypeError, "popped() takes a deque, not %.100s", Py_TYPE(q)->tp_name);
        return NULL;
    }
    return receiving_new(NULL, NULL, q);
}

/* -- The run queue ---------------------------------------------------------- */

static inline int
call_method1(PyObject *o, PyObject *name, PyObject *arg)
{
    PyObject *r = PyObject_CallMethodOneArg(o, name, arg);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* RunQueue.ready(task), with its common case (a batch is under way) inline. */
static inline int
make_ready(PyObject *task)
{
    PyObject *runq = get(task, t_runq);
    if (PyObject_TypeCheck(runq, RunQueueType) && get(runq, q_scheduled) == Py_True) {
        return append(get(runq, q_queue), task);
    }
    return call_method1(runq, s_ready, task);
}

/* ProcessTask._step: see the Python method, which this follows line by line. */
static PyObject *
step(PyObject *task)
{
    PyObject *r = PyObject_CallOneArg(future_done, task);
    if (r == NULL) {
        return NULL;
    }
    int done = r == Py_True;
    Py_DECREF(r);
    if (done) {
        Py_RETURN_NONE;
    }
    if (!PyObject_TypeCheck(get(task, t_proc), ProcessType) || !PyObject_TypeCheck(get(task, t_runq), RunQueueType) ||
        !PyContext_CheckExact(get(task, t_context))) {
        PyErr_SetString(PyExc_TypeError, "a ProcessTask that its __init__ did not set up");
        return NULL;
    }
    PyObject *exc = Py_NewRef(get(task, t_exc));
    if (get(task, t_must_cancel) == Py_True) {
        set(task, t_must_cancel, Py_False);
        PyObject *msg = get(task, t_cancel_message);
        Py_SETREF(exc, msg == Py_None ? PyObject_CallNoArgs(CancelledError) : PyObject_CallOneArg(CancelledError, msg));
        if (exc == NULL) {
            return NULL;
        }
    }
    PyObject *proc = Py_NewRef(get(task, t_proc));
    PyObject *coro = Py_NewRef(get(proc, pr_coro));
    PyObject *loop = Py_NewRef(get(get(task, t_runq), q_loop));
    PyObject *ctx = Py_NewRef(get(task, t_context));
    PyObject *result = NULL;
    PyObject *ok = NULL;
    int failed = 0;
    set(task, t_fut_waiter, Py_None);

    PyObject *red = get(proc, pr_reductions);
    PyObject *red1 = PyNumber_Add(red, ONE);
    if (red1 == NULL) {
        failed = 1;
        goto release;
    }
    set(proc, pr_reductions, red1);
    Py_DECREF(red1);

    PyObject *targs[2] = {loop, task};
    r = PyObject_Vectorcall(enter_task, targs, 2, NULL);
    if (r == NULL) {
        failed = 1;
        goto release;
    }
    Py_DECREF(r);

    PySendResult status;
    if (PyContext_Enter(ctx) < 0) {
        status = PYGEN_ERROR;
    }
    else {
        if (exc == Py_None) {
            status = PyIter_Send(coro, Py_None, &result);
        }
        else {
            set(task, t_exc, Py_None);
            result = PyObject_CallMethodOneArg(coro, s_throw, exc);
            status = result != NULL ? PYGEN_NEXT : PYGEN_ERROR;
        }
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyContext_Exit(ctx) < 0) {
            /* Cannot happen: this very context was entered above. */
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            Py_CLEAR(result);
            failed = 1;
            goto leave;
        }
        PyErr_Restore(type, value, tb);
    }

    if (status == PYGEN_ERROR && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        /* Returned from a throw: the value is the exception's. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        result = value != NULL ? PyObject_GetAttrString(value, "value") : Py_NewRef(Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (result == NULL) {
            failed = 1;
            goto leave;
        }
        status = PYGEN_RETURN;
    }

    if (status == PYGEN_RETURN) {
        ok = PyObject_CallMethodOneArg(task, s_returned, result);
    }
    else if (status == PYGEN_ERROR) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value == NULL) {
            /* Could not be normalized: that error is what to report. */
            PyErr_Restore(type, value, tb);
        }
        else {
            if (tb != NULL) {
                PyException_SetTraceback(value, tb);
            }
            int cancelled = PyObject_IsInstance(value, CancelledError);
            if (cancelled >= 0) {
                ok = PyObject_CallMethodOneArg(task, cancelled ? s_cancelled : s_raised, value);
            }
            Py_XDECREF(type);
            Py_DECREF(value);
            Py_XDECREF(tb);
        }
    }
    else if (Py_IS_TYPE(result, WakeType) && get(result, w_task) == task) {
        set(result, w_blocking, Py_False);
        if (get(task, t_must_cancel) == Py_True) {
            ok = PyObject_CallMethodOneArg(task, s_cancel_wait, result);
        }
        else {
            set(task, t_fut_waiter, result);
            ok = Py_NewRef(Py_None);
        }
    }
    else {
        PyObject *yargs[3] = {task, result, loop};
        ok = PyObject_VectorcallMethod(s_yielded, yargs, 3, NULL);
    }
    if (ok == NULL) {
        failed = 1;
    }
    Py_XDECREF(ok);

leave:
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        r = PyObject_Vectorcall(leave_task, targs, 2, NULL);
        if (r == NULL) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            failed = 1;
        }
        else {
            Py_DECREF(r);
            PyErr_Restore(type, value, tb);
        }
    }
release:
    Py_XDECREF(result);
    Py_DECREF(exc);
    Py_DECREF(proc);
    Py_DECREF(coro);
    Py_DECREF(loop);
    Py_DECREF(ctx);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
task_step(PyObject *task, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "_step takes at most one argument");
        return NULL;
    }
    return step(task);
}

/* RunQueue._run: the ready steps, up to the budget, then the loop's turn. */
static PyObject *
runq_run(PyObject *runq, PyObject *Py_UNUSED(ignored))
{
    PyObject *queue = Py_NewRef(get(runq, q_queue));
    long n = budget;
    int failed = 0;
    while (n > 0) {
        Py_ssize_t len = PyObject_Size(queue);
        if (len < 0) {
            failed = 1;
            break;
        }
        if (len == 0) {
            break;
        }
        PyObject *task = popleft(queue);
        if (task == NULL) {
            failed = 1;
            break;
        }
        PyObject *r = Py_IS_TYPE(task, ProcessTaskType) ? step(task) : PyObject_CallMethodNoArgs(task, s_step);
        Py_DECREF(task);
        if (r == NULL) {
            failed = 1;
            break;
        }
        Py_DECREF(r);
        n--;
    }
    /* finally: */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int more = PyObject_IsTrue(queue);
    PyObject *r = NULL;
    if (more > 0) {
        PyObject *bound = PyObject_GetAttr(runq, s_run);
        if (bound != NULL) {
            r = PyObject_CallMethodOneArg(get(runq, q_loop), s_call_soon, bound);
            Py_DECREF(bound);
        }
    }
    else if (more == 0) {
        set(runq, q_scheduled, Py_False);
        r = Py_NewRef(Py_None);
    }
    Py_DECREF(queue);
    if (r == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(r);
    PyErr_Restore(type, value, tb);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef task_step_def = {
    "_step", (PyCFunction)(void (*)(void))task_step, METH_FASTCALL,
    "Run the process to its next wait (the run queue calls this; so does a future it awaits, when done).",
};

static PyMethodDef runq_run_def = {
    "_run", (PyCFunction)runq_run, METH_NOARGS,
    "Run the ready steps, up to BUDGET, then give the event loop a turn.",
};

static int
install(PyObject *cls, PyMethodDef *def)
{
    PyObject *descr = PyDescr_NewMethod((PyTypeObject *)cls, def);
    if (descr == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttrString(cls, def->ml_name, descr);
    Py_DECREF(descr);
    return rc;
}

static PyObject *
setup_scheduler(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "Process", "Pid", "ProcessTask", "Wake", "RunQueue", "states", "CancelledError",
        "enter_task", "leave_task", "current_task", "future_done", "budget", NULL,
    };
    PyObject *Process, *Pid, *ProcessTask, *Wake, *RunQueue, *states, *cancelled, *enter, *leave, *current, *done;
    long n;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$O!O!O!O!O!OOOOOOl:setup_scheduler", kwlist,
                                     &PyType_Type, &Process, &PyType_Type, &Pid, &PyType_Type, &ProcessTask,
                                     &PyType_Type, &Wake, &PyType_Type, &RunQueue, &states, &cancelled, &enter,
                                     &leave, &current, &done, &n)) {
        return NULL;
    }
    PyObject *idle, *pending, *done_state;
    if (!PyArg_ParseTuple(states, "OOO:states", &idle, &pending, &done_state)) {
        return NULL;
    }
    if (slot_offset(Process, "_queue", &mb_queue) < 0 || slot_offset(Process, "_waiter", &mb_waiter) < 0 ||
        slot_offset(Process, "_takes", &mb_takes) < 0 || slot_offset(Process, "_handed", &mb_handed) < 0 ||
        slot_offset(Process, "suspended_on", &mb_suspended_on) < 0 || slot_offset(Process, "node", &pr_node) < 0 ||
        slot_offset(Process, "task", &pr_task) < 0 || slot_offset(Process, "_coro", &pr_coro) < 0 ||
        slot_offset(Process, "reductions", &pr_reductions) < 0 || slot_offset(Pid, "_proc", &pid_proc) < 0 ||
        slot_offset(ProcessTask, "_fut_waiter", &t_fut_waiter) < 0 || slot_offset(ProcessTask, "_wake", &t_wake) < 0 ||
        slot_offset(ProcessTask, "_exc", &t_exc) < 0 || slot_offset(ProcessTask, "_must_cancel", &t_must_cancel) < 0 ||
        slot_offset(ProcessTask, "_cancel_message", &t_cancel_message) < 0 ||
        slot_offset(ProcessTask, "_proc", &t_proc) < 0 || slot_offset(ProcessTask, "_runq", &t_runq) < 0 ||
        slot_offset(ProcessTask, "_context", &t_context) < 0 || slot_offset(Wake, "_state", &w_state) < 0 ||
        slot_offset(Wake, "_result", &w_result) < 0 || slot_offset(Wake, "_task", &w_task) < 0 ||
        slot_offset(Wake, "_callbacks", &w_callbacks) < 0 ||
        slot_offset(Wake, "_asyncio_future_blocking", &w_blocking) < 0 ||
        slot_offset(RunQueue, "_queue", &q_queue) < 0 || slot_offset(RunQueue, "_scheduled", &q_scheduled) < 0 ||
        slot_offset(RunQueue, "loop", &q_loop) < 0) {
        return NULL;
    }
    keep((PyObject **)&PidType, Pid);
    keep((PyObject **)&ProcessType, Process);
    keep((PyObject **)&RunQueueType, RunQueue);
    keep((PyObject **)&ProcessTaskType, ProcessTask);
    keep((PyObject **)&WakeType, Wake);
    keep(&IDLE, idle);
    keep(&PENDING, pending);
    keep(&DONE, done_state);
    keep(&CancelledError, cancelled);
    keep(&enter_task, enter);
    keep(&leave_task, leave);
    keep(&current_task, current);
    keep(&future_done, done);
    budget = n;
    if (install(ProcessTask, &task_step_def) < 0 || install(RunQueue, &runq_run_def) < 0) {
        return NULL;
    }
    ready_scheduler = 1;
    Py_RETURN_NONE;
}

/* -- send and receive --------------------------------------------------------- */

/* pybeam.send: a local pid's two common cases (a process waiting for any
 * message, or one with a queue) here; anything else in kernel.py's _send. */
static PyObject *
send_local(PyObject *msg, PyObject *target)
{
    PyObject *w = get(target, mb_waiter);
    if (w == Py_None) {
        PyObject *q = get(target, mb_queue);
        if (q != Py_None) {
            if (append(q, msg) < 0) {
                return NULL;
            }
            return Py_NewRef(msg);
        }
    }
    else if (Py_IS_TYPE(w, WakeType) && get(target, mb_takes) == Py_True && get(w, w_state) == PENDING) {
        /* The process's own task waits for any message: hand it over. */
        Py_INCREF(w);
        set(target, mb_waiter, Py_None);
        set(target, mb_handed, w);
        set(w, w_result, msg);
        set(w, w_state, DONE);
        PyObject *task = get(w, w_task);
        int rc = 0;
        if (Py_IS_TYPE(task, ProcessTaskType) && get(task, t_fut_waiter) == w) {
            Py_INCREF(task);
            rc = make_ready(task);
            Py_DECREF(task);
        }
        if (rc == 0 && get(w, w_callbacks) != Py_None) {
            PyObject *r = PyObject_CallMethodNoArgs(w, s_call_back);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
        }
        Py_DECREF(w);
        return rc < 0 ? NULL : Py_NewRef(msg);
    }
    if (call_method1(target, s_put, msg) < 0) {
        return NULL;
    }
    return Py_NewRef(msg);
}

static PyObject *
send_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (!ready_kernel) {
        PyErr_SetString(PyExc_RuntimeError, "pybeam._speedups: setup_kernel() was not called");
        return NULL;
    }
    if (PyVectorcall_NARGS(nargsf) == 2 && kwnames == NULL && Py_IS_TYPE(args[0], PidType)) {
        PyObject *target = get(args[0], pid_proc);
        if (target != Py_None && PyObject_TypeCheck(target, ProcessType)) {
            PyObject *proc = this_process();
            if (proc == NULL) {
                return NULL;
            }
            int local = proc != Py_None && get(target, pr_node) == get(proc, pr_node);
            Py_DECREF(proc);
            if (local) {
                Py_INCREF(target);
                PyObject *r = send_local(args[1], target);
                Py_DECREF(target);
                return r;
            }
        }
    }
    return PyObject_Vectorcall(send_py, args, nargsf, kwnames);
}

/* pybeam.receive: receive() of any message by a spawned process in its own
 * task here; anything else (a pattern, a timeout) in kernel.py's _receive. */
static PyObject *
receive_own(PyObject *proc, PyObject *task)
{
    PyObject *w = get(proc, mb_waiter);
    int free = w == Py_None;
    if (!free) {
        if (Py_IS_TYPE(w, WakeType)) {
            free = get(w, w_state) != PENDING;
        }
        else {
            PyObject *r = PyObject_CallMethod(w, "done", NULL);
            if (r == NULL) {
                return NULL;
            }
            free = r == Py_True;
            Py_DECREF(r);
        }
    }
    PyObject *runq = get(task, t_runq);
    if (!free || !PyObject_TypeCheck(runq, RunQueueType)) {
        return Py_NewRef(Py_None); /* not here: the Python code's case */
    }
    PyObject *cur = PyObject_CallOneArg(current_task, get(runq, q_loop));
    if (cur == NULL) {
        return NULL;
    }
    int own = cur == task;
    Py_DECREF(cur);
    if (!own) {
        return Py_NewRef(Py_None);
    }
    set(proc, mb_handed, Py_None);
    PyObject *wake = get(task, t_wake);
    if (Py_IS_TYPE(wake, WakeType) && get(wake, w_state) == IDLE) {
        set(wake, w_state, PENDING);
        Py_INCREF(wake);
    }
    else {
        wake = PyObject_CallMethodNoArgs(task, s_park);
        if (wake == NULL) {
            return NULL;
        }
        if (!Py_IS_TYPE(wake, WakeType)) {
            PyErr_SetString(PyExc_TypeError, "ProcessTask._park() did not give a Wake");
            Py_DECREF(wake);
            return NULL;
        }
    }
    set(proc, mb_waiter, wake);
    set(proc, mb_takes, Py_True);
    PyObject *r = receiving_new(wake, proc, NULL);
    Py_DECREF(wake);
    return r;
}

static PyObject *
receive_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (!ready_kernel) {
        PyErr_SetString(PyExc_RuntimeError, "pybeam._speedups: setup_kernel() was not called");
        return NULL;
    }
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        return PyObject_Vectorcall(receive_py, args, nargsf, kwnames);
    }
    PyObject *proc = this_process();
    if (proc == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    int here = 0; /* r is the answer (NULL: an error), or the Python code gives it */
    if (proc != Py_None && get(proc, mb_suspended_on) == Py_None) {
        PyObject *q = get(proc, mb_queue);
        Py_ssize_t len = q != Py_None ? PyObject_Size(q) : 0;
        if (len < 0) {
            here = 1;
        }
        else if (len > 0) {
            r = receiving_new(NULL, NULL, q);
            here = 1;
        }
        else {
            PyObject *task = get(proc, pr_task);
            if (Py_IS_TYPE(task, ProcessTaskType)) {
                Py_INCREF(task);
                r = receive_own(proc, task);
                Py_DECREF(task);
                if (r == Py_None) {
                    Py_CLEAR(r);
                }
                else {
                    here = 1;
                }
            }
        }
    }
    Py_DECREF(proc);
    if (here) {
        return r;
    }
    return PyObject_Vectorcall(receive_py, NULL, 0, NULL);
}

/* -- Function: receive as a module attribute ---------------------------------- */

/* A C function that, unlike a builtin, has a __dict__: kernel.py gives it its
 * Python counterpart's name, module, docstring and signature (receive's
 * default, NO_DEFAULT, cannot be written in a builtin's text signature), so
 * that help(), inspect.signature() and functions crossing to another node
 * by name ("pybeam.kernel:receive") see what they see in the Python code. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *dict;
} Function;

static int
function_traverse(Function *f, visitproc visit, void *arg)
{
    Py_VISIT(f->dict);
    return 0;
}

static int
function_clear(Function *f)
{
    Py_CLEAR(f->dict);
    return 0;
}

static void
function_dealloc(Function *f)
{
    PyObject_GC_UnTrack(f);
    function_clear(f);
    PyObject_GC_Del(f);
}

static PyObject *
function_repr(Function *f)
{
    PyObject *name = f->dict != NULL ? PyDict_GetItemString(f->dict, "__qualname__") : NULL;
    if (name != NULL) {
        return PyUnicode_FromFormat("<function %S>", name);
    }
    return PyUnicode_FromFormat("<pybeam._speedups.Function at %p>", f);
}

static PyGetSetDef function_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FunctionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pybeam._speedups.Function",
    .tp_doc = "A compiled function of pybeam's hot path.",
    .tp_basicsize = sizeof(Function),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_dealloc = (destructor)function_dealloc,
    .tp_traverse = (traverseproc)function_traverse,
    .tp_clear = (inquiry)function_clear,
    .tp_repr = (reprfunc)function_repr,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Function, vectorcall),
    .tp_dictoffset = offsetof(Function, dict),
    .tp_getattro = PyObject_GenericGetAttr,
    .tp_setattro = PyObject_GenericSetAttr,
    .tp_getset = function_getset,
};

static PyObject *
function_new(vectorcallfunc vectorcall, const char *name)
{
    Function *f = PyObject_GC_New(Function, &FunctionType);
    if (f == NULL) {
        return NULL;
    }
    f->vectorcall = vectorcall;
    f->dict = Py_BuildValue("{ss}", "__name__", name);
    if (f->dict == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

static PyObject *
setup_kernel(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"send", "receive", "current", NULL};
    PyObject *s, *r, *c;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOO!:setup_kernel", kwlist, &s, &r, &PyContextVar_Type, &c)) {
        return NULL;
    }
    if (need_scheduler() < 0) {
        return NULL;
    }
    keep(&send_py, s);
    keep(&receive_py, r);
    keep(&current_process, c);
    ready_kernel = 1;
    Py_RETURN_NONE;
}

/* send is a builtin (which a call site specializes for: a tenth of a one-way
 * message's cost, against a Function's), its signature written as text. */
static PyObject *
send_builtin(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return send_vectorcall(module, args, (size_t)nargs, kwnames);
}

static PyMethodDef module_methods[] = {
    {"send", (PyCFunction)(void (*)(void))send_builtin, METH_FASTCALL | METH_KEYWORDS,
     "send($module, /, dest, msg)\n--\n\n"
     "Send ``msg`` to a pid, a registered name or ``(name, node)``; returns ``msg``.\n\n"
     "Sending to a dead pid is not an error (the message is dropped, as in\n"
     "BEAM); sending to a name nobody registered raises :class:`BadArg`."},
    {"setup_scheduler", (PyCFunction)(void (*)(void))setup_scheduler, METH_VARARGS | METH_KEYWORDS,
     "Look up the scheduler's classes' slots, and install the compiled ProcessTask._step and RunQueue._run."},
    {"setup_kernel", (PyCFunction)(void (*)(void))setup_kernel, METH_VARARGS | METH_KEYWORDS,
     "Give send and receive the Python functions they fall back on."},
    {"waiting", (PyCFunction)(void (*)(void))waiting, METH_FASTCALL,
     "waiting($module, wake, mailbox, /)\n--\n\nAwait a process's wake from its own task (pybeam.mailbox.waiting)."},
    {"popped", (PyCFunction)popped, METH_O,
     "popped($module, queue, /)\n--\n\nAn awaitable of the queue's oldest message, taken when it is awaited."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pybeam._speedups",
    .m_doc = "The hot path of a local message (send, receive, a process's step), compiled.",
    .m_size = -1,
    .m_methods = module_methods,
};

/* PyModule_Add (Python 3.13) for older Pythons: adds obj, a new reference. */
static int
add_new(PyObject *m, const char *name, PyObject *obj)
{
    if (obj == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(m, name, obj);
    Py_DECREF(obj);
    return rc;
}

#define INTERN(var, text)                                  \
    do {                                                   \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                   \
    } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&ReceivingType) < 0 || PyType_Ready(&FunctionType) < 0) {
        return NULL;
    }
    if ((ONE = PyLong_FromLong(1)) == NULL) {
        return NULL;
    }
    INTERN(s_ready, "ready");
    INTERN(s_put, "put");
    INTERN(s_call_back, "_call_back");
    INTERN(s_park, "_park");
    INTERN(s_returned, "_returned");
    INTERN(s_cancelled, "_cancelled");
    INTERN(s_raised, "_raised");
    INTERN(s_cancel_wait, "_cancel_wait");
    INTERN(s_yielded, "_yielded");
    INTERN(s_call_soon, "call_soon");
    INTERN(s_run, "_run");
    INTERN(s_step, "_step");
    INTERN(s_give_back, "give_back");
    INTERN(s_throw, "throw");
    INTERN(s_result, "result");
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL) {
        return NULL;
    }
    PyObject *deque = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque == NULL) {
        return NULL;
    }
    deque_append = PyObject_GetAttrString(deque, "append");
    deque_popleft = PyObject_GetAttrString(deque, "popleft");
    DequeType = (PyTypeObject *)deque; /* kept */
    if (deque_append == NULL || deque_popleft == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Receiving", (PyObject *)&ReceivingType) < 0 ||
        PyModule_AddObjectRef(m, "Function", (PyObject *)&FunctionType) < 0 ||
        add_new(m, "receive", function_new(receive_vectorcall, "receive")) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
