"""Queries of preimage sampling: token rows, positions, and the warnings about them.

A query is ``(input x_q, site, position t)`` (InversionView, arXiv 2405.17653, Sec. 3).
This module turns what a user gives (texts or token ids, position names or indices) into
``[Q, n_ctx]`` ids and ``[Q]`` absolute positions, and warns where the answer would be
unreliable: a query the task's grammar rejects (named positions may point at the wrong
token), or a position holding a special token or one the decoders were not trained on.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError, PositionError, TLInversionWarning
from tl_inversion.tasks.base import CharTask, real_end

__all__ = [
    "QueryFormatWarning",
    "UntrainedPositionWarning",
    "check_query_format",
    "check_query_positions",
    "query_tokens",
    "resolve_query_positions",
]


class UntrainedPositionWarning(TLInversionWarning):
    """The queried position is one the task's decoders were not trained on (or special)."""


class QueryFormatWarning(TLInversionWarning):
    """A query does not follow the task's grammar (named positions may then be wrong)."""


def check_query_format(task: Any, qtok: Tensor) -> None:
    """Refuse token ids outside the vocabulary; warn on queries the task's grammar rejects."""
    d_vocab = getattr(task, "d_vocab", None)
    if d_vocab is not None and bool(((qtok < 0) | (qtok >= d_vocab)).any()):
        raise InputValueError(
            f"query token ids must lie in 0..{d_vocab - 1} (the {getattr(task, 'name', 'task')} vocabulary)")
    is_valid = getattr(task, "is_valid", None)
    if is_valid is None:
        return
    ok = is_valid(qtok.cpu())
    if not bool(ok.all()):
        bad = [task.decode(qtok[i].cpu()) for i in (~ok).nonzero().flatten().tolist()[:3]]
        warnings.warn(
            f"{int((~ok).sum())} quer{'y does' if int((~ok).sum()) == 1 else 'ies do'} not follow the "
            f"{getattr(task, 'name', 'task')} format (e.g. {bad}); named positions are found by the format "
            "and may point at the wrong token",
            QueryFormatWarning,
            stacklevel=3,
        )


def query_tokens(task: Any, queries: Any) -> Int[Tensor, "Q n_ctx"]:
    """Query rows ``[Q, n_ctx]`` (int64, CPU) from a text, a list of texts or token ids.

    Raises:
        InputTypeError: float/bool ids, a list holding something other than texts, or
            neither texts nor a tensor.
        InputValueError: an empty list, a tensor that is not ``[n_ctx]`` / ``[Q >= 1,
            n_ctx]`` (for a fixed-length character task: rows of another length), or a text
            the task cannot encode.
    """
    if isinstance(queries, str):
        return task.encode(queries)
    if isinstance(queries, (list, tuple)):
        if not queries:
            raise InputValueError("queries is empty: give at least one query (a text or a token row)")
        bad = [i for i, q in enumerate(queries) if not isinstance(q, str)]
        if bad:
            raise InputTypeError(
                f"queries must all be texts (or give one token tensor [Q, n_ctx]); item {bad[0]} is "
                f"{type(queries[bad[0]]).__name__}"
            )
        return task.encode(list(queries))
    if isinstance(queries, Tensor):
        if queries.is_floating_point() or queries.dtype == torch.bool:
            raise InputTypeError(f"query tokens must be integer ids, got dtype {queries.dtype}")
        q = queries[None] if queries.ndim == 1 else queries
        if q.ndim != 2 or q.shape[0] == 0:
            raise InputValueError(f"query tokens must have shape [n_ctx] or [Q, n_ctx], got {tuple(queries.shape)}")
        if isinstance(task, CharTask) and q.shape[1] != task.n_ctx:
            raise InputValueError(
                f"{task.name} query rows are {task.n_ctx} ids long (BOS text EOS PAD..., as task.encode gives); "
                f"got rows of {q.shape[1]}"
            )
        return q.detach().long().cpu()
    raise InputTypeError(
        f"a query is a text (encoded by the task) or a token tensor [n_ctx] / [Q, n_ctx], got {type(queries).__name__}"
    )


def _negative_index(position: Any) -> int | None:
    if isinstance(position, bool):
        return None
    if isinstance(position, str) and position.startswith("-") and position[1:].isdigit():
        position = int(position)
    return position if isinstance(position, int) and position < 0 else None


def _resolve_one(task: Any, tokens: Tensor, position: Any) -> Tensor:
    """``task.resolve_position``, except that a negative index counts from each row's last non-PAD token."""
    neg = _negative_index(position)
    pad_id = getattr(task, "pad_id", None)
    if neg is None or pad_id is None:
        return task.resolve_position(tokens, position)
    n_ctx = tokens.shape[-1]
    if neg < -n_ctx:
        raise PositionError(
            f"position {neg} out of range for inputs of length {n_ctx}: valid -{n_ctx}..{n_ctx - 1}")
    idx = real_end(tokens, pad_id) + 1 + neg
    short = torch.nonzero(idx < 0).flatten()
    if short.numel():
        raise PositionError(
            f"position {neg} counts from each query's last non-PAD token, but {short.numel()} of {tokens.shape[0]} "
            f"queries have fewer than {-neg} real tokens (first: query {int(short[0])})"
        )
    return idx.long()


def resolve_query_positions(task: Any, tokens: Int[Tensor, "Q n_ctx"], positions: Any) -> Int[Tensor, " Q"]:
    """Absolute positions ``[Q]`` (int64, CPU): one position (index or task name) for all
    queries, or one per query (a sequence or ``[Q]`` tensor).

    A negative index counts from each row's real end, its last non-PAD token (``-1`` is
    that token: EOS in a well-formed query), as patching does, so it never lands on PAD;
    an index reaching before the row's start is refused. Without a task PAD id it counts
    from the last column, as in Python.

    Raises:
        InputValueError: a number of positions other than 1 or ``Q``.
        PositionError: a position the task cannot resolve, or one outside the rows.
    """
    q, n_ctx = tokens.shape
    if isinstance(positions, (int, str)) and not isinstance(positions, bool):
        pos = _resolve_one(task, tokens, positions)
    elif isinstance(positions, Tensor) and positions.ndim == 0:
        pos = _resolve_one(task, tokens, int(positions))
    else:
        items = positions.tolist() if isinstance(positions, Tensor) else list(positions)
        if len(items) != q:
            raise InputValueError(f"got {len(items)} positions for {q} queries; give one per query or one for all")
        pos = torch.cat([_resolve_one(task, tokens[i : i + 1], p) for i, p in enumerate(items)])
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1).cpu()
    if q and (int(pos.min()) < 0 or int(pos.max()) >= n_ctx):
        raise PositionError(f"resolved positions {pos.tolist()[:8]} fall outside the inputs (0..{n_ctx - 1})")
    return pos


def check_query_positions(task: Any, tokens: Int[Tensor, "Q n_ctx"], pos: Int[Tensor, " Q"]) -> None:
    """Warn about queries whose position cannot or was not trained to be inverted.

    Args:
        task: the task (``special_mask``; ``train_position_mask`` if it restricts positions).
        tokens: query rows ``[Q, n_ctx]``.
        pos: one absolute position per query ``[Q]``.

    Warns:
        UntrainedPositionWarning: at most three per kind: the position holds BOS/EOS/PAD
        (membership never compares those), or it is not a trained position (InversionView
        App. C: decoders see only the task's trained positions and BOS).
    """
    rows = torch.arange(tokens.shape[0])
    special = task.special_mask(tokens)[rows, pos]
    for i in torch.nonzero(special).flatten().tolist()[:3]:
        warnings.warn(
            f"query {i}: position {int(pos[i])} holds a special token (BOS/EOS/PAD): decoders are not trained "
            "on such activations, and membership compares samples only at their own non-special positions "
            "(so the query is not in its own preimage)",
            UntrainedPositionWarning,
            stacklevel=3,
        )
    mask_fn = getattr(task, "train_position_mask", None)
    if mask_fn is None:
        return
    trained = mask_fn(tokens)[rows, pos] | special
    for i in torch.nonzero(~trained).flatten().tolist()[:3]:
        names = getattr(task, "train_position_names", None)
        warnings.warn(
            f"query {i}: position {int(pos[i])} is not one the {getattr(task, 'name', 'task')} decoders are trained on"
            + (f" (positions {', '.join(map(repr, names))})" if names else "")
            + "; its samples come from an untrained condition",
            UntrainedPositionWarning,
            stacklevel=3,
        )


