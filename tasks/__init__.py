"""Tasks: the use cases (data, model, metrics). One registry maps names to tasks.

Add a task: write ``tasks/<name>.py`` with a :class:`tasks.base.Task` subclass, then add
one line to ``TASKS`` below.
"""

from __future__ import annotations

from tasks.bank_marketing import BankMarketingTask
from tasks.base import ArrayDataset, Partition, Task
from tasks.breast_cancer import BreastCancerTask
from tasks.digits import DigitsTask
from tasks.fraud import FraudTask
from tasks.ner import NerTask
from tasks.pneumonia import PneumoniaTask

TASKS: dict[str, type[Task]] = {
    "digits": DigitsTask,
    "breast-cancer": BreastCancerTask,
    "fraud": FraudTask,
    "pneumonia": PneumoniaTask,
    "ner": NerTask,
    "bank-marketing": BankMarketingTask,
}

_INSTANCES: dict[str, Task] = {}


def available_tasks() -> list[str]:
    """Registered task names."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The (shared, stateless) task instance registered as ``name``."""
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    if name not in _INSTANCES:
        _INSTANCES[name] = TASKS[name]()
    return _INSTANCES[name]


__all__ = ["TASKS", "ArrayDataset", "Partition", "Task", "available_tasks", "get_task"]
