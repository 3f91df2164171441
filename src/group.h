/* group.h: a run of a Tasks as a group: every entry at once.
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> task -> group -> tasks / handle -> background -> module.
 * Calls util, coro and task.
 */
#ifndef BG_GROUP_H
#define BG_GROUP_H

#include "task.h"

/* Returns a new reference to a group run of the entries of `tasks` (a
   list, read when the run starts), or NULL with an exception set. */
PyObject *group_new(bg_state *st, PyObject *tasks);

/* Module exec: makes the group run's type.  Returns 0 or -1. */
int group_init_types(PyObject *module, bg_state *st);

#endif /* BG_GROUP_H */
