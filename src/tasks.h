/* tasks.h: Tasks, run in order (Seq) or as a group (Group).
 *
 * Chain: platform.h -> compat.h -> pool -> util -> report -> coro -> bridge
 *        -> task -> group -> [tasks] / handle -> background -> module.
 * Calls util, coro, task and group.
 */
#ifndef BG_TASKS_H
#define BG_TASKS_H

#include "group.h"

/* Module exec: makes the Tasks, Seq and Group types (after Task's).
   Returns 0 or -1. */
int tasks_init_types(PyObject *module, bg_state *st);

#endif /* BG_TASKS_H */
