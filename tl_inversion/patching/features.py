"""From reading to verifying: turn an InversionView reading into a patching test.

If the activation at a node encodes a feature g (as its InversionView preimage suggests,
Huang et al. 2024 Sec. 4) and the output depends on g through it, patching it from a
contrast with another value of g moves the output, and patching it from a contrast with
the same g (but otherwise different input) does not. :func:`feature_pairs` draws such
partners; :func:`verify_feature` runs both patches.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.patching._warn import AnswerCheckWarning
from tl_inversion.patching.activation import run_patching
from tl_inversion.patching.metrics import AnswerLogProb, MetricLike
from tl_inversion.patching.notation import GroupLike, NodeGroup, PositionLike, Resolver
from tl_inversion.patching.sources import Contrast
from tl_inversion.tasks.contrast_set import as_generator


def feature_pairs(
    tokens: Int[Tensor, "n pos"],
    feature: Callable[[Tensor], Tensor],
    *,
    pool: Int[Tensor, "m pos"] | None = None,
    same: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | int | None = None,
    max_rounds: int = 200,
) -> tuple[Tensor, Tensor]:
    """For each row, a random pool row with a different feature value and one with the same.

    Args:
        tokens: ``[n, pos]`` clean inputs.
        feature: ``g(tokens) -> [n]`` the feature read from an activation (e.g. counting's
            ``query_counts``).
        pool: ``[m, pos]`` where partners come from; default ``tokens``.
        same: optional ``key(tokens) -> [n]`` that partners must share (e.g. the length).
        generator: a ``torch.Generator`` or an int seed.
        max_rounds: rejection-sampling rounds before a row is given up (index ``-1``).

    Returns:
        ``(change_index, keep_index)``: ``[n]`` indices into ``pool`` of a partner whose
        feature differs / is equal (never the same row of ``tokens`` when ``pool`` is
        ``tokens``), ``-1`` where none was found.

    Raises:
        InputValueError: ``feature`` does not return one value per row.
        InputTypeError: ``generator`` is neither a generator nor an int.
    """
    g = as_generator(generator)
    pool_t = tokens if pool is None else pool
    f_clean = torch.as_tensor(feature(tokens)).reshape(-1)
    f_pool = f_clean if pool is None else torch.as_tensor(feature(pool_t)).reshape(-1)
    if f_clean.shape[0] != tokens.shape[0] or f_pool.shape[0] != pool_t.shape[0]:
        raise InputValueError("feature(tokens) must return one value per row")
    s_clean = s_pool = None
    if same is not None:
        s_clean = torch.as_tensor(same(tokens)).reshape(-1)
        s_pool = s_clean if pool is None else torch.as_tensor(same(pool_t)).reshape(-1)
    n, m = tokens.shape[0], pool_t.shape[0]
    self_idx = torch.arange(n) if pool is None else None

    def draw(want_equal: bool) -> Tensor:
        out = torch.full((n,), -1, dtype=torch.long)
        # candidates grouped by key so that most draws succeed
        key_clean = f_clean if want_equal else torch.zeros(n, dtype=torch.long)
        key_pool = f_pool if want_equal else torch.zeros(m, dtype=torch.long)
        if s_clean is not None:
            both = torch.stack([torch.cat([key_clean, key_pool]).double(), torch.cat([s_clean, s_pool]).double()], 1)
            _, inv = torch.unique(both, dim=0, return_inverse=True)
        else:
            _, inv = torch.unique(torch.cat([key_clean, key_pool]), return_inverse=True)
        inv_clean, inv_pool = inv[:n], inv[n:]
        order = torch.argsort(inv_pool, stable=True)
        sorted_keys = inv_pool[order]
        n_keys = int(inv.max()) + 1 if inv.numel() else 0
        counts = torch.bincount(sorted_keys, minlength=n_keys)
        starts = torch.cumsum(counts, 0) - counts
        todo = torch.arange(n)
        todo = todo[counts[inv_clean[todo]] > 0]
        for _ in range(max_rounds):
            if todo.numel() == 0:
                break
            k = inv_clean[todo]
            r = (torch.rand(todo.numel(), generator=g) * counts[k]).long().clamp(max=counts[k] - 1)
            cand = order[starts[k] + r]
            ok = (f_pool[cand] == f_clean[todo]) if want_equal else (f_pool[cand] != f_clean[todo])
            if self_idx is not None:
                ok &= cand != todo
            out[todo[ok]] = cand[ok]
            todo = todo[~ok]
        return out

    return draw(False), draw(True)


def verify_feature(
    model: Any,
    node: GroupLike,
    tokens: Int[Tensor, "n pos"],
    feature: Callable[[Tensor], Tensor],
    *,
    answers: Tensor | Callable[[Tensor], Tensor],  # [n] ids; non-integers get this module's message
    answer_position: PositionLike,
    positions: Resolver = None,
    pool: Int[Tensor, "m pos"] | None = None,
    same: Callable[[Tensor], Tensor] | None = None,
    metric: MetricLike = None,
    generator: torch.Generator | int | None = None,
    feature_name: str | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """Test a reading: patch a node from inputs that change feature g and from inputs that keep it.

    If the activation at ``node`` encodes g (as its InversionView preimage suggests) and the
    output depends on g through it, patching it from a contrast with another value of g
    moves the output, and patching it from a contrast with the same g (but otherwise
    different input) does not.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        node: the node (or group), e.g. ``"a1@:"``.
        tokens: ``[n, pos]`` clean inputs.
        feature: ``g(tokens) -> [n]`` the feature.
        answers: ``[n]`` clean answer *token ids* (not values: counting's answer 3 is the
            id of the token "3"), or ``fn(tokens) -> [n]`` (applied to the clean inputs only).
        answer_position: the predicting position.
        positions: resolver of named positions (e.g. the task).
        pool: where contrasts come from (default ``tokens``).
        same: a key the contrast must share with the clean input (e.g. length).
        metric: default :class:`AnswerLogProb` (log p of the clean answer; needs no contrast
            answer, which "keeps g" pairs would not have).
        generator: seed of the pairing.
        feature_name: label of g in the table.
        n_boot: bootstrap resamples for the confidence interval (0: none).
        ci: confidence level of the interval.
        seed: seed of the bootstrap.
        **kwargs: passed to :func:`run_patching` (``batch_size``, ``trim_padding``, ...).

    Returns:
        DataFrame indexed by ``"changes g"`` and ``"keeps g"`` with ``feature``, ``nodes``,
        ``n``, ``LD_clean`` and ``LD_patched`` (the mean metric, by default log p of the clean
        answer, in nats), ``effect``, ``ci_low``/``ci_high``, ``n_unpaired`` (rows without a
        partner); ``df.attrs["ratio"]`` = effect(changes) / effect(keeps).

    Raises:
        InputValueError: no pair could be formed for either kind; ``answers`` are not
            integer token ids of the model's vocabulary (one per row).

    Warns:
        AnswerCheckWarning: the mean clean metric says the model does not predict the
            answers: with the default metric, mean ``log p(answer)`` below ``log(1 /
            d_vocab)`` (worse than a uniform guess); with another metric, a mean that is not
            positive. Typical cause: answers given as values (counts) instead of token ids.
    """
    group = NodeGroup.parse(node)
    ans = _check_answers(model, answers(tokens) if callable(answers) else answers, tokens.shape[0])
    change, keep = feature_pairs(tokens, feature, pool=pool, same=same, generator=generator)
    pool_t = tokens if pool is None else pool
    rows_out = {}
    settings = {}
    for label, idx in (("changes g", change), ("keeps g", keep)):
        ok = idx >= 0
        if not bool(ok.any()):
            which = "a single" if label == "changes g" else "a unique"
            raise InputValueError(f"no contrast pair {label!r} could be formed: every row has {which} feature value")
        res = run_patching(
            model,
            {group.name: group},
            tokens[ok],
            Contrast(pool_t[idx[ok]]),
            answers=ans[ok],
            metric=metric if metric is not None else AnswerLogProb(),
            answer_position=answer_position,
            positions=positions,
            **kwargs,
        )
        row = res.row(group.name, n_boot=n_boot, ci=ci, seed=seed)
        for k in ("group", "normalised", "LD_contrast", "normalised_by"):  # no contrast answer here
            row.pop(k)
        row["n_unpaired"] = int((~ok).sum())
        rows_out[label] = row
        settings = res.settings
    _warn_clean_metric(model, rows_out["changes g"]["LD_clean"], metric)
    df = pd.DataFrame.from_dict(rows_out, orient="index")
    df.insert(0, "feature", feature_name or getattr(feature, "__name__", "g"))
    df.attrs.update(settings)
    e_change, e_keep = df.loc["changes g", "effect"], df.loc["keeps g", "effect"]
    df.attrs["ratio"] = float(e_change / e_keep) if e_keep else float("inf")
    return df


__all__ = ["feature_pairs", "verify_feature"]


def _check_answers(model: Any, answers: Any, n: int) -> Tensor:
    """``answers`` as ``[n]`` long token ids, checked against the model's vocabulary."""
    ans = torch.as_tensor(answers)
    if ans.is_floating_point() or ans.dtype == torch.bool:
        raise InputValueError(f"answers must be integer token ids, got dtype {ans.dtype}")
    ans = ans.long().reshape(-1)
    if ans.shape[0] != n:
        raise InputValueError(f"answers has {ans.shape[0]} values for {n} rows: give one token id per row")
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if d_vocab is not None and ans.numel() and (int(ans.min()) < 0 or int(ans.max()) >= d_vocab):
        raise InputValueError(
            f"answers must be token ids of the model's vocabulary (0..{d_vocab - 1}); got values in "
            f"{int(ans.min())}..{int(ans.max())}"
        )
    return ans


def _warn_clean_metric(model: Any, mean_clean: float, metric: MetricLike) -> None:
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if metric is None:
        floor = -math.log(d_vocab) if d_vocab else 0.0
        if mean_clean < floor:
            warnings.warn(
                f"mean log p(answer) on the clean inputs is {mean_clean:.2f}, worse than a uniform guess "
                f"({floor:.2f}): the model does not predict these answers. Are they token ids (not values)?",
                AnswerCheckWarning,
                stacklevel=3,
            )
    elif not mean_clean > 0:
        warnings.warn(
            f"the mean clean metric is {mean_clean:.4f} (not positive): the model does not prefer the given answers. "
            "Are they token ids (not values), and is the answer position right?",
            AnswerCheckWarning,
            stacklevel=3,
        )
