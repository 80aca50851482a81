"""Tasks: one module per unlearning task, a registry to choose one by the recipe's ``task``.

Adding a task is one module (a :class:`soulcli.tasks.base.Task` subclass: its data, splits,
record kinds, metric suite and headline metrics) plus one line here, and its tests.
"""

from __future__ import annotations

from soulcli.errors import unknown_name
from soulcli.tasks.base import DataConfig, Headline, Task, TrainSet, encode_train_set
from soulcli.tasks.detox import DetoxTask, DetoxTaskData
from soulcli.tasks.muse import MuseTask, MuseTaskData
from soulcli.tasks.tofu import TofuData, TofuTask
from soulcli.tasks.wmdp import WmdpTask, WmdpTaskData

TASKS: dict[str, type[Task]] = {t.name: t for t in (TofuTask, MuseTask, WmdpTask, DetoxTask)}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


def get_task(data: DataConfig, name: str) -> Task:
    """The task ``name`` configured with its ``data`` section."""
    return task_class(name)(data)


__all__ = ["TASKS", "DataConfig", "DetoxTask", "DetoxTaskData", "Headline", "MuseTask", "MuseTaskData", "Task", "TofuData", "TofuTask", "TrainSet",
           "WmdpTask", "WmdpTaskData", "encode_train_set", "get_task", "task_class"]
