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

/* Returns a new reference to a name for `func` fit for a log line: its
   module and qualified name, never its arguments.  Never fails but on
   memory (NULL with an exception set). */
PyObject *bg_callable_name(bg_state *st, PyObject *func);

#endif /* BG_REPORT_H */
