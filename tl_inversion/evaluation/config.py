"""The options of :func:`~tl_inversion.evaluation.report.evaluate` as one dataclass.

``EvaluateConfig`` is what ``tl-inversion evaluate`` builds from its flags. In Python::

    plan = cfg.apply_to_plan(default_plan(task))
    evaluate(model, bank, task, data, plan, **cfg.evaluate_kwargs())

runs the same evaluation. Its defaults are ``evaluate``'s (a test compares the two);
``epsilon=None`` means the metric's paper value, decided by the library. This module imports
nothing heavy (no torch), so the command line can build its flags cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tl_inversion.errors import ConfigError
from tl_inversion.inversion.config import check_distance_settings, check_schedule_field

__all__ = ["EvaluateConfig"]

_BLURRED = {"auto": None, "exact": False, "blurred": True}


@dataclass
class EvaluateConfig:
    """What to measure of a decoder bank and how (faithfulness, consistency, completeness).

    Args:
        sites: the bank's sites to evaluate; ``None``: all of them.
        positions: positions (task-named or indices) of the faithfulness and consistency
            tables; ``None``: the task's default plan (needed for tasks without one).
        completeness_queries: query texts whose true preimage is enumerated (every input of
            the task's space runs through the model per site: addition 810,000, counting
            390,000; minutes per site on a CPU); ``None``: the task's default plan's.
        completeness_positions: positions of the completeness queries (needed with them);
            ``None``: the task's default plan's.
        completeness: run the completeness stage at all.
        completeness_condition: noise flag of the completeness condition for banks trained
            with ``train_noise_flag``: ``"exact"``, ``"blurred"``, or ``"auto"`` (blurred
            exactly when the bank has the flag).
        n_faithfulness: held-out activations per site and position (paper 200).
        n_queries: pool queries per site and position (pool fractions, consistency).
        n_repeats: repeats of the schedule per pool (1: the paper's 4 settings x 64 = 256
            samples).
        schedule: the pools' ``(temperature, noise)`` settings (the paper's by default).
        n_bos_samples: samples from the BOS activation per site (consistency baseline).
        n_random: random inputs for the chance baseline.
        max_candidates: candidates the decoder scores per completeness query; 0: all.
        n_samples: decoder samples per completeness query (recall).
        epsilon: preimage threshold on the distance D; ``None``: the metric's paper value
            (0.1 for l2, 0.25 for cosine).
        metric: the distance D: ``"l2"`` (the paper) or ``"cosine"``.
        seed: seed of every random choice (queries, samples).
        progress: show a progress bar over the stages.
    """

    sites: list[str] | None = None
    positions: list[str] | None = None
    completeness_queries: list[str] | None = None
    completeness_positions: list[str] | None = None
    completeness: bool = True
    completeness_condition: Literal["auto", "exact", "blurred"] = "auto"
    n_faithfulness: int = 200
    n_queries: int = 16
    n_repeats: int = 1
    schedule: list[tuple[float, float]] = field(
        default_factory=lambda: [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1)])
    n_bos_samples: int = 256
    n_random: int = 20000
    max_candidates: int = 20000
    n_samples: int = 256
    epsilon: float | None = None
    metric: Literal["l2", "cosine"] = "l2"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        """Check every field.

        Raises:
            ConfigError: a count out of range, ``max_candidates`` 1 or negative, a
                non-positive epsilon, an unknown metric or condition, an empty list of
                positions or sites, or an invalid schedule (``field`` names the field).
        """
        self.schedule = check_schedule_field(self.schedule)
        for name, low in (("n_faithfulness", 1), ("n_queries", 1), ("n_repeats", 1), ("n_bos_samples", 0),
                          ("n_random", 1), ("n_samples", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be >= {low} (an int), got {value!r}", field=name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}", field="seed")
        if isinstance(self.max_candidates, bool) or not isinstance(self.max_candidates, int) \
                or self.max_candidates == 1 or self.max_candidates < 0:
            raise ConfigError(f"max_candidates must be 0 (all) or >= 2, got {self.max_candidates!r}",
                              field="max_candidates")
        check_distance_settings(self.epsilon, self.metric)
        if self.completeness_condition not in _BLURRED:
            raise ConfigError(f"completeness_condition must be one of {sorted(_BLURRED)}, got "
                              f"{self.completeness_condition!r}", field="completeness_condition")
        for name in ("sites", "positions", "completeness_queries", "completeness_positions"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                raise ConfigError(f"{name} must be a list, got the string {value!r}; write [{value!r}]", field=name)
            setattr(self, name, list(value))
        for name in ("sites", "positions"):
            if getattr(self, name) is not None and not getattr(self, name):
                raise ConfigError(f"{name} must name at least one, or be None (sites: all of the bank's; "
                                  "positions: the task's plan)", field=name)

    @property
    def blurred(self) -> bool | None:
        """``evaluate``'s ``blurred`` argument: ``None`` (auto), ``False`` (exact) or ``True``."""
        return _BLURRED[self.completeness_condition]

    def apply_to_plan(self, plan: Any) -> Any:
        """A copy of an ``EvalPlan`` with this config's positions and completeness settings.

        Args:
            plan: the task's :class:`~tl_inversion.evaluation.report.EvalPlan` (any dataclass
                with ``positions``, ``completeness_queries`` and ``completeness_positions``).

        Returns:
            The plan with the fields this config sets replaced (``completeness=False``:
            no completeness queries or positions).
        """
        changes: dict[str, Any] = {}
        if self.positions is not None:
            changes["positions"] = list(self.positions)
        if self.completeness_queries is not None:
            changes["completeness_queries"] = list(self.completeness_queries)
        if self.completeness_positions is not None:
            changes["completeness_positions"] = list(self.completeness_positions)
        if not self.completeness:
            changes.update(completeness_queries=[], completeness_positions=[])
        return dataclasses.replace(plan, **changes)

    def evaluate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``evaluate`` this config sets.

        Returns:
            ``{name: value}``: the counts, ``schedule``, ``epsilon``, ``metric``, ``seed``,
            ``progress``, ``sites``, ``max_candidates`` (0 becomes ``None``: all) and
            ``blurred``.
        """
        plan_only = {"positions", "completeness_queries", "completeness_positions", "completeness",
                     "completeness_condition"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in plan_only}
        out["schedule"] = tuple(self.schedule)
        out["max_candidates"] = self.max_candidates or None
        out["blurred"] = self.blurred
        return out
