"""What an evaluation of a decoder bank measures for a task: :class:`EvalPlan`.

An evaluation plan is task metadata (which positions matter, which features of an input a
reading may carry, which queries have an enumerable preimage), so it lives with the tasks,
the lowest stage; :func:`tl_inversion.evaluation.evaluate` runs it. Each built-in task
gives its own default plan (:meth:`default_plan` of the task object, see
:mod:`tl_inversion.tasks.protocol`); :func:`default_plan` only asks the task.

Source: InversionView (Huang et al. 2024, arXiv 2405.17653), App. C (faithfulness),
Sec. 3 (completeness), Sec. 4 (readings as features shared by the preimage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.tasks.base import PositionLike

__all__ = ["RANDOM", "EvalPlan", "Feature", "PositionLike", "default_plan"]

#: A feature of inputs: ``g(tokens [n, n_ctx]) -> values [n]`` (or ``[n, k]`` for tuples).
Feature = Callable[[Tensor], Tensor]

#: Position label of the paper's faithfulness rate (a random trainable position per input).
RANDOM = "random"


@dataclass
class EvalPlan:
    """What :func:`~tl_inversion.evaluation.evaluate` measures.

    Args:
        positions: positions (task names or indices) of the faithfulness and consistency
            tables.
        features: ``{name: g}`` with ``g(tokens [n, n_ctx]) -> [n]`` values, called on
            well-formed inputs only.
        completeness_queries: query texts whose true preimage is enumerated (empty: skip); a
            list (or tuple), not a lone string.
        completeness_positions: positions at which every completeness query is read; a list
            (or tuple), not a lone string.
        candidates: ``() -> [N, n_ctx]`` the enumerated input space (needed for completeness).
        class_fn: task-level class of an input for ``class_recall`` (optional).
        min_members: completeness rows whose true preimage is smaller are reported but not
            counted in the AUROC summary (the issue's rule: at least 10 members).
    """

    positions: list[PositionLike]
    features: dict[str, Feature] = field(default_factory=dict)
    # Sequence, not list: a lone string (itself a sequence) must reach completeness_rows's clear message
    completeness_queries: Sequence[str] = field(default_factory=list)
    completeness_positions: Sequence[PositionLike] = field(default_factory=list)
    candidates: Callable[[], Tensor] | None = None
    class_fn: Callable[[Tensor], Any] | None = None
    min_members: int = 10

    def completeness_rows(self, task: Any) -> tuple[Tensor, Tensor, list[str]]:
        """The completeness rows: every query at every completeness position.

        Args:
            task: the task object (e.g. ``tl_inversion.tasks.addition.make_task()``) that
                encodes the query texts and resolves the positions in each query.

        Returns:
            ``(queries [R, n_ctx], positions [R], names)`` with ``R = len(completeness_positions)
            * len(completeness_queries)``, position-major (the queries repeated per
            position), ``positions`` the resolved indices (each query's own: queries of
            different layouts resolve to different indices) and ``names`` their labels.

        Raises:
            InputTypeError: ``completeness_queries`` or ``completeness_positions`` is a single
                string instead of a list, or ``task`` is not a task object.
            InputValueError: the plan has no completeness queries or no completeness
                positions, or a query the task cannot encode.
            PositionError: a position the task cannot resolve.
        """
        for name in ("completeness_queries", "completeness_positions"):
            if isinstance(getattr(self, name), str):
                raise InputTypeError(f"EvalPlan.{name} must be a list, got the string {getattr(self, name)!r}; "
                                     f"write [{getattr(self, name)!r}]")
        if not self.completeness_queries or not self.completeness_positions:
            raise InputValueError("this plan measures no completeness: it needs completeness_queries and "
                                  f"completeness_positions, got {len(self.completeness_queries)} queries and "
                                  f"{len(self.completeness_positions)} positions")
        if not (hasattr(task, "encode") and hasattr(task, "resolve_position")):
            raise InputTypeError(f"task must be a task object (e.g. tl_inversion.tasks.get_task('addition')), "
                                 f"got {type(task).__name__}")
        cq = task.encode(list(self.completeness_queries))
        queries = cq.repeat(len(self.completeness_positions), 1)
        positions = torch.cat([task.resolve_position(cq, p) for p in self.completeness_positions])
        names = [str(p) for p in self.completeness_positions for _ in range(cq.shape[0])]
        return queries, positions, names


def default_plan(task: str | Any) -> EvalPlan:
    """The default evaluation plan of a task: asks the task (its ``default_plan()`` method).

    Built-in plans (see each task module): ``addition`` (positions ``+ = A1..A4``; digit,
    carry and sum-length features; completeness over all 810,000 inputs) and ``counting``
    (positions ``c`` and ``:``; count, letter and length features; candidates of the test
    split but no completeness queries: give them to measure completeness).

    Args:
        task: a task object or a registered task name.

    Returns:
        The task's :class:`EvalPlan`.

    Raises:
        InputValueError: an unknown task name, or a task without a default plan (then give
            an :class:`EvalPlan` with positions).
    """
    if isinstance(task, str):
        from tl_inversion.tasks import as_task, task_names

        if task not in task_names():
            raise InputValueError(_no_plan(task))
        task = as_task(task)
    make = getattr(task, "default_plan", None)
    plan = make() if callable(make) else None
    if plan is None:
        raise InputValueError(_no_plan(getattr(task, "name", type(task).__name__)))
    return plan


def _no_plan(name: str) -> str:
    from tl_inversion.tasks import task_names

    built_in = []
    for n in task_names():
        try:
            from tl_inversion.tasks import get_task

            if callable(getattr(get_task(n), "default_plan", None)) and get_task(n).default_plan() is not None:
                built_in.append(n)
        except Exception:  # noqa: BLE001 - a broken registration must not hide the real message
            continue
    return (f"no default evaluation plan for task {name!r} (built-in plans: {', '.join(built_in) or 'none'}); "
            "give an EvalPlan with positions")
