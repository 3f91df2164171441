/* report.h: errors nobody will read, handed to someone.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> [report] -> coro -> bridge
 *        -> task / tasks / handle -> background -> module.
 * Calls only util and compat.h.
 */
#ifndef BG_REPORT_H
#define BG_REPORT_H

#include "util.h"

/* Module exec: resolves the "backgrounder" logger (at import, so that a
   report during interpreter shutdown needs no import).  Returns 0 or -1. */
int report_init(bg_state *st);

/* Logs `exc` on the "backgrounder" logger at ERROR with its traceback, or
   hands it to configure(on_error=...).  `what` is the message, a %s in it
   standing for the name of `func` (module and qualified name, never the
   arguments); the record's location (pathname, lineno, funcName) is
   func's, where its code is known.  With no handler configured anywhere,
   the record goes to stderr with its level and logger name.  Never raises
   (an exception set on entry is kept): a failure to log is reported as
   unraisable. */
#define BG_CALL_FAILED "background call %s failed"
void bg_report_error(bg_state *st, const char *what, PyObject *func, PyObject *exc);

/* Logs `message` (a str) on the "backgrounder" logger at WARNING, or on
   stderr with its level and logger name when no handler is configured.
   Never raises (an exception set on entry is kept). */
void bg_report_warning(bg_state *st, PyObject *message);

/* A failure nobody has read yet.  It lives inside its owner (a handle),
   on a list of the module state, so that the exit reports those whose
   owner is still alive (a global holding a failed handle, say); the owner
   reports it when it dies, or forgets it when someone reads it.  `owner`,
   `func` and `exc` are borrowed: the owner keeps them while it is linked. */
struct bg_lost {
    bg_lost *prev, *next;
    PyObject *owner, *func, *exc;
    int linked;
};

/* GIL held.  Puts `lost` (zeroed, or unlinked) on the list. */
void report_keep(bg_state *st, bg_lost *lost, PyObject *owner, PyObject *func, PyObject *exc);
/* GIL held.  Someone read the failure: off the list, never reported. */
void report_forget(bg_state *st, bg_lost *lost);
/* GIL held.  Reports the failure now if it is still on the list (then
   takes it off).  Keeps an exception set on entry. */
void report_now(bg_state *st, bg_lost *lost);
/* GIL held.  Reports every failure on the list (at exit). */
void report_all_kept(bg_state *st);

/* Returns a new reference to a name for `func` fit for a log line: its
   module and qualified name, never its arguments.  Never fails but on
   memory (NULL with an exception set). */
PyObject *bg_callable_name(bg_state *st, PyObject *func);

#endif /* BG_REPORT_H */
