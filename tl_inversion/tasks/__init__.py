"""Tasks: input grammar, vocabulary, data, named positions (see :mod:`.base`), what the rest
of the package needs of a task (:class:`~.protocol.Task`) and evaluation plans (:mod:`.plan`).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.tasks.base import CharTask, PositionError
from tl_inversion.tasks.plan import EvalPlan, default_plan
from tl_inversion.tasks.protocol import Task

_TASKS: dict[str, tuple[Callable[[], Task], Callable[[str], Tensor]]] = {}
_BUILTINS_LOADED = False


def register(name: str, make: Callable[[], Task], data: Callable[[str], Tensor]) -> None:
    """Register a task: ``make()`` builds it, ``data(split)`` gives ``[n, n_ctx]`` token ids."""
    _TASKS[name] = (make, data)


def _builtin() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from tl_inversion.tasks import counting

    register("counting", counting.make_task, counting.paper_split)
    try:
        from tl_inversion.tasks import addition
    except ImportError:
        pass


def task_names() -> list[str]:
    """Names of the registered tasks."""
    _builtin()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered tasks).
    """
    if name not in task_names():
        raise InputValueError(f"unknown task {name!r}; registered tasks: {', '.join(task_names())}")
    return _TASKS[name][0]()


def as_task(task: Any) -> Task:
    """``task`` itself, or the registered task of that name.

    Raises:
        ValueError: an unknown task name (the message lists the registered tasks).
        TypeError: neither a name nor a task object (one with ``encode`` and ``vocab_hash``).
    """
    if isinstance(task, str):
        return get_task(task)
    if not (hasattr(task, "encode") and hasattr(task, "vocab_hash")):
        raise InputTypeError(f"expected a task (e.g. get_task('counting')) or a registered task name "
                        f"({', '.join(task_names())}), got {type(task).__name__}")
    return task


def task_data(name: str, split: str) -> Tensor:
    """Token ids of a task's ``"train"`` or ``"test"`` split."""
    get_task(name)
    return _TASKS[name][1](split)


__all__ = ["CharTask", "EvalPlan", "PositionError", "Task", "as_task", "default_plan", "get_task", "register",
           "task_data", "task_names"]
