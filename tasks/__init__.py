"""Tasks: the use cases (data, model, metrics), each registered in its own file.

Add a task: write ``tasks/<name>.py`` with a :class:`tasks.base.Task` subclass decorated
with ``@TASKS.register("<name>")`` (:mod:`tasks.registry`); nothing else to edit. A
separate package registers through the entry-point group ``fedsilo.tasks``.
"""

from __future__ import annotations

from tasks.base import ArrayDataset, Partition, Task
from tasks.registry import TASKS

_INSTANCES: dict[str, Task] = {}


def available_tasks() -> list[str]:
    """Registered task names."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The (shared, stateless) task instance registered as ``name``."""
    if name not in _INSTANCES:
        _INSTANCES[name] = TASKS[name]()
    return _INSTANCES[name]


__all__ = ["TASKS", "ArrayDataset", "Partition", "Task", "available_tasks", "get_task"]
