"""The options of :func:`~tl_inversion.inversion.sampling.sample_preimage` as one dataclass.

``SampleConfig`` is what the ``tl-inversion sample`` command builds from its flags; in Python,
``sample_preimage(bank, model, task, query, site, position, **cfg.kwargs())`` runs the same
sampling. Its defaults are ``sample_preimage``'s (a test compares the two); ``epsilon=None``
means the metric's paper value (:func:`~tl_inversion.inversion.distance.default_epsilon`),
decided by the library, not here. This module imports nothing heavy (no torch).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from tl_inversion.errors import ConfigError

__all__ = ["SampleConfig", "check_distance_settings", "check_schedule_field"]

Metric = Literal["l2", "cosine"]


def check_schedule_field(schedule: Any, name: str = "schedule") -> list[tuple[float, float]]:
    """A ``(temperature, noise)`` schedule as a list of float pairs.

    Args:
        schedule: a non-empty sequence of ``(temperature, noise)`` pairs, both finite and >= 0.
        name: the config field, for the error.

    Returns:
        The pairs as ``(float, float)`` tuples.

    Raises:
        ConfigError: an empty schedule, an item that is not a pair, or a negative or
            non-finite value.
    """
    try:
        pairs = [(float(t), float(n)) for t, n in schedule]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be (temperature, noise) pairs, e.g. [(1.0, 0.0)], got {schedule!r}",
                          field=name) from None
    if not pairs:
        raise ConfigError(f"{name} needs at least one (temperature, noise) pair", field=name)
    for t, n in pairs:
        if not (math.isfinite(t) and math.isfinite(n) and t >= 0 and n >= 0):
            raise ConfigError(f"{name} pairs need a temperature >= 0 (0: greedy) and a noise >= 0, got ({t}, {n})",
                              field=name)
    return pairs


def check_distance_settings(epsilon: Any, metric: Any) -> None:
    """Check a config's ``epsilon`` (a positive finite distance, or None) and ``metric`` (``"l2"`` / ``"cosine"``).

    Raises:
        ConfigError: naming the field (``epsilon`` or ``metric``) and the valid values.
    """
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
                                    and epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"epsilon must be a positive distance, or None for the metric's default "
                          f"(0.1 for l2, 0.25 for cosine), got {epsilon!r}", field="epsilon")
    if metric not in ("l2", "cosine"):
        raise ConfigError(f"metric must be 'l2' or 'cosine', got {metric!r}", field="metric")


@dataclass
class SampleConfig:
    """How to sample and verify one preimage (InversionView Sec. 3).

    Args:
        schedule: ``(temperature, noise)`` settings, each used ``n_repeats`` times;
            temperature 0 means greedy, noise is the std of the Gaussian added to the query
            activation in units of its own std (the paper's four settings by default).
        n_repeats: times the schedule is repeated (paper: 4).
        batch_size: candidates per setting and repeat (paper: 64).
        epsilon: preimage threshold on the distance D (``in_preimage`` is
            ``D <= epsilon``); ``None``: the metric's paper value (0.1 for l2, 0.25 for
            cosine).
        metric: the distance D: ``"l2"`` (``||z - z_q|| / ||z_q||``, the paper) or
            ``"cosine"`` (``1 - cos``).
        seed: seed of generation and noise (same seed, same result); ``None`` uses the
            global random state.
        colour: compute each token's colour value (two extra decoder passes over the
            distinct candidates).
        allow_mismatch: warn instead of failing when the probed model is not the one the
            decoders were trained on.
        max_batch: most rows per decoder call and per probed forward (memory, not results).
        min_in_preimage: stop early once a query has this many in-preimage samples, checked
            after each repeat of the whole schedule; ``None``: draw all ``n_repeats``.
        compile: ``torch.compile`` the decoder's generation step (the first call compiles).
    """

    schedule: list[tuple[float, float]] = field(
        default_factory=lambda: [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1)])
    n_repeats: int = 4
    batch_size: int = 64
    epsilon: float | None = None
    metric: Metric = "l2"
    seed: int | None = 0
    colour: bool = True
    allow_mismatch: bool = False
    max_batch: int = 1024
    min_in_preimage: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        """Check every field.

        Raises:
            ConfigError: a count below 1, a non-positive epsilon, an unknown metric or an
                invalid schedule (the error's ``field`` names the field).
        """
        self.schedule = check_schedule_field(self.schedule)
        for name in ("n_repeats", "batch_size", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be >= 1 (an int), got {value!r}", field=name)
        m = self.min_in_preimage
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"min_in_preimage must be an int >= 1 or None, got {m!r}", field="min_in_preimage")
        check_distance_settings(self.epsilon, self.metric)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}", field="seed")

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``sample_preimage`` / ``sample_many`` this config sets.

        Returns:
            ``{name: value}`` for every field (``schedule`` as a tuple of pairs).
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["schedule"] = tuple(self.schedule)
        return out
