"""How patching resolves positions on right-padded rows.

Named positions (``"tc"``, ``":"``) are resolved by the task or a ``{name: fn}`` mapping
(:func:`tl_inversion.patching.notation.resolve_position`). A non-negative integer is an
absolute index. A *negative* integer counts from each row's real end, the last token that
is not PAD: ``-1`` is the last real token, ``-2`` the one before, whatever the padding
after it (the rule InversionView's sampling uses for query positions). Without a PAD id
(no ``pad_id=`` and a resolver that does not know one) rows are taken as unpadded and
``-1`` is the last column.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, PositionError
from tl_inversion.patching.notation import PositionLike, Resolver, resolve_position
from tl_inversion.tasks.base import real_end


def _negative_int(position: Any) -> int | None:
    if isinstance(position, str) and position.startswith("-") and position[1:].isdigit():
        position = int(position)
    if isinstance(position, int) and not isinstance(position, bool) and position < 0:
        return position
    return None


def check_resolver(positions: Any) -> Resolver:
    """``positions`` as a resolver: ``None``, a task (``resolve_position``) or a mapping.

    A sequence of ``(name, fn)`` pairs is read as the mapping it spells.

    Raises:
        InputTypeError: anything else (e.g. a list of names): the expected types are named.
    """
    if positions is None or hasattr(positions, "resolve_position"):
        return positions
    if isinstance(positions, Mapping):
        bad = [k for k, v in positions.items() if not callable(v)]
        if bad:
            raise InputTypeError(
                f"positions= maps names to functions fn(tokens) -> [n]; {bad[0]!r} maps to no function"
            )
        return positions
    if (
        isinstance(positions, Sequence)
        and not isinstance(positions, str)
        and positions
        and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) and callable(p[1]) for p in positions
        )
    ):
        return dict(positions)
    raise InputTypeError(
        f"positions= must be a task (an object with resolve_position, e.g. counting.make_task()), a dict "
        f"{{name: fn(tokens) -> [n]}}, or None; got {type(positions).__name__}"
    )


class RowEndPositions:
    """A resolver that counts negative integer positions from each row's last non-PAD token.

    Everything else goes to the wrapped resolver; attributes (``pad_id``, ``name``...) are
    read through to it, so metrics that use ``ctx.positions`` see the task.

    Args:
        inner: the task, ``{name: fn}`` mapping or ``None``.
        pad_id: the PAD token id; ``None`` = rows are unpadded (negative = from the last column).
    """

    def __init__(self, inner: Resolver, pad_id: int | None) -> None:
        self.inner = inner
        self.pad_id = pad_id

    def resolve_position(self, tokens: Int[Tensor, "batch pos"], position: PositionLike) -> Int[Tensor, " batch"]:
        """Absolute index ``[batch]`` of ``position`` in each row.

        Raises:
            PositionError: an index outside ``-pos..pos-1``, a negative index reaching before
                the start of a row's real tokens, or what the wrapped resolver raises.
        """
        neg = _negative_int(position)
        if neg is None or self.pad_id is None:
            return resolve_position(tokens, position, self.inner)
        n = tokens.shape[-1]
        if not -n <= neg < n:
            raise PositionError(f"position {neg} out of range for inputs of length {n}: valid {-n}..{n - 1}")
        idx = real_end(tokens, self.pad_id) + 1 + neg
        short = torch.nonzero(idx < 0).flatten()
        if short.numel():
            raise PositionError(
                f"position {neg} counts from each row's last non-PAD token, but {short.numel()} rows have fewer "
                f"real tokens (first: row {int(short[0])})"
            )
        return idx.long()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"RowEndPositions({self.inner!r}, pad_id={self.pad_id})"


def row_end_resolver(positions: Any, pad_id: int | None) -> RowEndPositions:
    """The resolver patching uses: ``positions`` checked, negatives from the real end.

    Args:
        positions: a task, a ``{name: fn}`` mapping, pairs, ``None`` or a :class:`RowEndPositions`.
        pad_id: the PAD id; ``None`` = the resolver's ``pad_id`` if it has one.

    Raises:
        InputTypeError: see :func:`check_resolver`.
    """
    if isinstance(positions, RowEndPositions):
        return positions if pad_id is None else RowEndPositions(positions.inner, pad_id)
    positions = check_resolver(positions)
    if pad_id is None:
        pad_id = getattr(positions, "pad_id", None)
    return RowEndPositions(positions, pad_id)
