"""The task registry. A task registers itself in its own file::

    from tasks.base import Task
    from tasks.registry import TASKS

    @TASKS.register("my-task", family="tabular")
    class MyTask(Task): ...

Every module of the :mod:`tasks` package is imported when the registry is first read, so
a new file in ``tasks/`` needs no list; a separate package registers through the
entry-point group ``fedsilo.tasks``. Compatibility is declared by the task itself:
``Task.local_dp_unsupported`` (why Opacus cannot train its model) and a vertical view in
:data:`tasks.vertical.VERTICAL_SPECS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.registry import Registry

if TYPE_CHECKING:
    from tasks.base import Task

#: Task name → :class:`tasks.base.Task` subclass.
#: Listed alphabetically: tasks register on import, whose order depends on who imports
#: what first.
TASKS: Registry[type[Task]] = Registry(
    "task", group="fedsilo.tasks", builtins=("tasks",), sort=True
)
