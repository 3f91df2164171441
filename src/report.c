/* report.c: errors nobody will read, to the "backgrounder" logger.  See report.h. */
#include "report.h"

#define LOG_ERROR 40     /* logging.ERROR */
#define LOG_WARNING 30   /* logging.WARNING */

int
report_init(bg_state *st)
{
    PyObject *logging = PyImport_ImportModule("logging");
    if (logging == NULL) {
        return -1;
    }
    st->logger = bg_call_method(logging, "getLogger", "s", "backgrounder");
    st->fallback_format = st->logger ? bg_call_method(logging, "Formatter", "s",
                                                      "%(levelname)s:%(name)s:%(message)s") : NULL;
    Py_DECREF(logging);
    return st->logger && st->fallback_format ? 0 : -1;
}

/* The innermost callable under partials and bound methods: a new reference. */
static PyObject *
unwrap(bg_state *st, PyObject *func)
{
    PyObject *obj = Py_NewRef(func);
    for (;;) {
        PyObject *inner = NULL;
        if (PyObject_TypeCheck(obj, (PyTypeObject *)st->partial_type)) {
            inner = PyObject_GetAttr(obj, st->str_func);
        }
        else if (PyMethod_Check(obj)) {
            inner = Py_NewRef(PyMethod_GET_FUNCTION(obj));
        }
        else {
            return obj;
        }
        Py_DECREF(obj);
        if (inner == NULL) {
            PyErr_Clear();
            return Py_NewRef(Py_None);
        }
        obj = inner;
    }
}

PyObject *
bg_callable_name(bg_state *st, PyObject *func)
{
    PyObject *obj = unwrap(st, func);
    PyObject *name = bg_getattr(obj, "__qualname__");
    if (name == NULL || !PyUnicode_Check(name)) {
        PyErr_Clear();
        Py_XDECREF(name);
        name = bg_type_name(Py_TYPE(obj));
        if (name == NULL) {
            PyErr_Clear();
            name = PyUnicode_FromString("<callable>");
        }
    }
    PyObject *module = bg_getattr(obj, "__module__");
    if (module != NULL && PyUnicode_Check(module) && name != NULL) {
        Py_SETREF(name, PyUnicode_FromFormat("%U.%U", module, name));
    }
    else {
        PyErr_Clear();
    }
    Py_XDECREF(module);
    Py_DECREF(obj);
    return name;
}

/* Where the record points: func's file, the line of the traceback entry in
   func's code (its first line if none), and its name.  Sets new references,
   or leaves the defaults ("(unknown file)", 0, None) when func has no code. */
static void
locate(bg_state *st, PyObject *func, PyObject *exc, PyObject **path, long *line, PyObject **name)
{
    PyObject *obj = unwrap(st, func);
    PyObject *code = bg_getattr(obj, "__code__");
    if (code == NULL || !PyCode_Check(code)) {
        PyErr_Clear();
        Py_XDECREF(code);
        Py_DECREF(obj);
        return;
    }
    PyObject *filename = bg_getattr(code, "co_filename");
    PyObject *first = bg_getattr(code, "co_firstlineno");
    PyObject *fname = bg_getattr(code, "co_name");
    if (filename && first && fname && PyUnicode_Check(filename) && PyUnicode_Check(fname)) {
        *path = Py_NewRef(filename);
        *name = Py_NewRef(fname);
        *line = PyLong_AsLong(first);
        /* The line that raised, if the traceback passes through func. */
        PyObject *tb = PyException_GetTraceback(exc);
        while (tb != NULL && tb != Py_None) {
            PyObject *frame = bg_getattr(tb, "tb_frame");
            PyObject *fcode = frame ? bg_getattr(frame, "f_code") : NULL;
            if (fcode == code) {
                PyObject *lineno = bg_getattr(tb, "tb_lineno");
                if (lineno != NULL && PyLong_Check(lineno)) {
                    *line = PyLong_AsLong(lineno);
                }
                Py_XDECREF(lineno);
            }
            Py_XDECREF(fcode);
            Py_XDECREF(frame);
            Py_SETREF(tb, bg_getattr(tb, "tb_next"));
        }
        Py_XDECREF(tb);
    }
    PyErr_Clear();
    Py_XDECREF(filename);
    Py_XDECREF(first);
    Py_XDECREF(fname);
    Py_DECREF(code);
    Py_DECREF(obj);
}

/* Writes the record to stderr as "LEVEL:name:message" and its traceback:
   what the user sees when logging was never configured.  Returns 0 or -1. */
static int
write_fallback(bg_state *st, PyObject *record)
{
    PyObject *text = bg_call_method(st->fallback_format, "format", "O", record);
    if (text == NULL) {
        return -1;
    }
    PyObject *err = PySys_GetObject("stderr");   /* borrowed */
    int r = 0;
    if (err != NULL && err != Py_None) {
        PyObject *line = PyUnicode_FromFormat("%U\n", text);
        PyObject *res = line ? bg_call_method(err, "write", "O", line) : NULL;
        r = res ? 0 : -1;
        Py_XDECREF(res);
        Py_XDECREF(line);
    }
    Py_DECREF(text);
    return r;
}

/* Makes a record of `what` % args at `level` pointing at path:line in
   fname (path NULL: unknown) with exc_info (a tuple, or None), and hands it
   to the logger's handlers, or to stderr when there are none.  Returns 0
   (also when the level is disabled), or -1 with an exception set. */
static int
emit(bg_state *st, int level, PyObject *path, long line, PyObject *fname, const char *what,
     PyObject *args, PyObject *exc_info)
{
    PyObject *logger = Py_NewRef(st->logger), *lname = NULL, *record = NULL, *res = NULL;
    int r = -1;
    res = bg_call_method(logger, "isEnabledFor", "i", level);
    int enabled = res ? PyObject_IsTrue(res) : -1;
    Py_CLEAR(res);
    if (enabled <= 0) {
        r = enabled;
        goto done;
    }
    lname = bg_getattr(logger, "name");
    if (lname == NULL) {
        goto done;
    }
    /* makeRecord(name, level, fn, lno, msg, args, exc_info, func) */
    if (path != NULL) {
        record = bg_call_method(logger, "makeRecord", "OiOlsOOO", lname, level, path, line,
                                     what, args, exc_info, fname ? fname : Py_None);
    }
    else {
        record = bg_call_method(logger, "makeRecord", "OisisOOO", lname, level,
                                     "(unknown file)", 0, what, args, exc_info, Py_None);
    }
    if (record == NULL) {
        goto done;
    }
    res = bg_call_method(logger, "hasHandlers", NULL);
    int handled = res ? PyObject_IsTrue(res) : -1;
    Py_CLEAR(res);
    if (handled < 0) {
        goto done;
    }
    if (handled) {
        res = bg_call_method(logger, "handle", "O", record);
        r = res ? 0 : -1;
    }
    else {
        r = write_fallback(st, record);
    }
done:
    Py_DECREF(logger);
    Py_XDECREF(lname);
    Py_XDECREF(record);
    Py_XDECREF(res);
    return r;
}

/* Logs the failure; returns 0 or -1 with an exception set. */
static int
log_error(bg_state *st, const char *what, PyObject *func, PyObject *exc)
{
    PyObject *name = NULL, *path = NULL, *fname = NULL, *exc_info = NULL, *args = NULL;
    long line = 0;
    int r = -1;
    name = bg_callable_name(st, func);
    if (name == NULL) {
        goto done;
    }
    locate(st, func, exc, &path, &line, &fname);
    PyObject *tb = PyException_GetTraceback(exc);
    exc_info = PyTuple_Pack(3, (PyObject *)Py_TYPE(exc), exc, tb ? tb : Py_None);
    Py_XDECREF(tb);
    args = PyTuple_Pack(1, name);
    if (exc_info == NULL || args == NULL) {
        goto done;
    }
    r = emit(st, LOG_ERROR, path, line, fname, what, args, exc_info);
done:
    Py_XDECREF(name);
    Py_XDECREF(path);
    Py_XDECREF(fname);
    Py_XDECREF(exc_info);
    Py_XDECREF(args);
    return r;
}

void
bg_report_warning(bg_state *st, PyObject *message)
{
    PyObject *saved = bg_fetch_exception();
    PyObject *args = PyTuple_Pack(1, message);
    if (args == NULL || emit(st, LOG_WARNING, NULL, 0, NULL, "%s", args, Py_None) < 0) {
        PyErr_WriteUnraisable(message);
    }
    Py_XDECREF(args);
    if (saved) {
        bg_restore(saved);
    }
}

void
bg_report_error(bg_state *st, const char *what, PyObject *func, PyObject *exc)
{
    PyObject *saved = bg_fetch_exception();
    if (st->on_error != NULL) {
        PyObject *on_error = Py_NewRef(st->on_error);
        PyObject *res = PyObject_CallOneArg(on_error, exc);
        if (res == NULL) {
            PyErr_WriteUnraisable(on_error);
        }
        Py_XDECREF(res);
        Py_DECREF(on_error);
    }
    else if (st->logger == NULL || log_error(st, what, func, exc) < 0) {
        PyErr_WriteUnraisable(exc);
    }
    if (saved) {
        bg_restore(saved);
    }
}

/* ---- failures nobody read yet ----------------------------------------------- */

void
report_keep(bg_state *st, bg_lost *lost, PyObject *owner, PyObject *func, PyObject *exc)
{
    if (lost->linked) {
        return;
    }
    lost->owner = owner;
    lost->func = func;
    lost->exc = exc;
    lost->prev = NULL;
    lost->next = st->lost;
    if (st->lost) {
        st->lost->prev = lost;
    }
    st->lost = lost;
    lost->linked = 1;
}

void
report_forget(bg_state *st, bg_lost *lost)
{
    if (!lost->linked) {
        return;
    }
    if (lost->prev) {
        lost->prev->next = lost->next;
    }
    else {
        st->lost = lost->next;
    }
    if (lost->next) {
        lost->next->prev = lost->prev;
    }
    lost->prev = lost->next = NULL;
    lost->linked = 0;
}

void
report_now(bg_state *st, bg_lost *lost)
{
    if (!lost->linked) {
        return;
    }
    PyObject *func = Py_NewRef(lost->func), *exc = Py_NewRef(lost->exc);
    report_forget(st, lost);
    bg_report_error(st, BG_CALL_FAILED, func, exc);
    Py_DECREF(func);
    Py_DECREF(exc);
}

void
report_all_kept(bg_state *st)
{
    while (st->lost != NULL) {
        PyObject *owner = Py_NewRef(st->lost->owner);   /* reporting may drop the rest */
        report_now(st, st->lost);
        Py_DECREF(owner);
    }
}
