"""Sources of patched values: where the activation written into a node comes from.

* :class:`Contrast` (``"contrast"``): the activation of a paired contrast input. Named
  positions are resolved separately on the clean and on the contrast row, so a contrast of
  another length is matched by role (counting: ``tc``/``:`` relative to EOS);
* :class:`FromCache`: a user's ``ActivationCache`` (or ``{hook name: tensor}``) with one row
  per clean input;
* :class:`MeanAblation` (``"mean"``): the mean activation over a reference data set at the
  same (named) position;
* :class:`ZeroAblation` (``"zero"``): zeros;
* :class:`Resample` (``"resample"``): the activation of a random row of a reference set.

These are plain settings; :mod:`tl_inversion.patching._engine` computes the values.
(Activation patching: Vig et al. 2020; Meng et al. 2022; Wang et al. 2022; resampling
ablation: Chan et al. 2022.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from tl_inversion.errors import InputValueError


class Source:
    """Where patched values come from (base class; see the concrete sources)."""

    kind = "source"
    has_run = False  # whether the source is a forward pass whose metric can be reported

    def describe(self) -> dict[str, Any]:
        """The settings recorded with results (``{"source": kind}``)."""
        return {"source": self.kind}


@dataclass
class Contrast(Source):
    """Values from a contrast input paired row by row with the clean input.

    Args:
        tokens: ``[n, pos']`` contrast token ids; ``None`` = the call's ``contrast_tokens``.
    """

    tokens: Tensor | None = None
    kind = "contrast"
    has_run = True


@dataclass
class FromCache(Source):
    """Values from a cache with one row per clean input (e.g. ``model.run_with_cache``).

    Args:
        cache: an ``ActivationCache`` or a mapping ``{hook name: [n, pos, ...]}`` holding the
            hooks of the patched nodes (``attn.hook_z`` for head outputs), read by exact key.
        tokens: ``[n, pos']`` the tokens the cache was computed on, to resolve named
            positions on them; ``None`` resolves them on the clean tokens.
    """

    cache: Any = None
    tokens: Tensor | None = None
    kind = "cache"


@dataclass
class MeanAblation(Source):
    """The mean activation over a reference data set at the same (named) position.

    For a named position the mean is over every reference row at that row's position; for
    all positions (``None``) it is the mean at each absolute index.

    Args:
        tokens: ``[m, pos]`` reference token ids; ``None`` = the clean tokens.
    """

    tokens: Tensor | None = None
    kind = "mean"


@dataclass
class ZeroAblation(Source):
    """Zeros (the activation removed)."""

    kind = "zero"


@dataclass
class Resample(Source):
    """The activation of a uniformly drawn row of a reference set (resampling ablation).

    Args:
        tokens: ``[m, pos']`` reference token ids; ``None`` = the clean tokens.
        answers: ``[m]`` answers of the reference rows (become the contrast answers).
        seed: seed of the draw (a ``torch.Generator`` also works).
    """

    tokens: Tensor | None = None
    answers: Tensor | None = None
    seed: int | torch.Generator = 0
    kind = "resample"
    has_run = True


SourceLike = Union[Source, str, Mapping[str, Tensor], Any]


def as_source(source: SourceLike) -> Source:
    """A :class:`Source` from an instance, a name, or a cache.

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, str):
        table = {"contrast": Contrast, "mean": MeanAblation, "zero": ZeroAblation, "resample": Resample}
        if source not in table:
            raise InputValueError(
                f"unknown source {source!r}; valid: {', '.join(table)}, a Source instance, or an ActivationCache"
            )
        return table[source]()
    if isinstance(source, Mapping) or hasattr(source, "cache_dict"):
        return FromCache(source)
    raise InputValueError(f"cannot use {type(source).__name__} as a patching source")


__all__ = ["Contrast", "FromCache", "MeanAblation", "Resample", "Source", "SourceLike", "ZeroAblation", "as_source"]
