"""Activation patching: the causal half of the InversionView workflow.

A reading from InversionView ("this activation encodes the count") is a hypothesis until
an intervention confirms it. Activation patching (Vig et al. 2020; Meng et al. 2022; Wang
et al. 2022; TransformerLens's ``patching.py``) runs the model on a *clean* input while
replacing the activations of some nodes (see :mod:`tl_inversion.patching.notation`) by
other values (:mod:`.sources`), and measures how much a metric (:mod:`.metrics`) moves.
InversionView (Huang et al. 2024, Sec. 4 and App. on counting) verifies its readings this
way: per-head outputs (and token/position embeddings) are patched from a *contrast* input,
alone and cumulatively in forward and backward order; the metric is the logit difference

    LD = logit[clean answer] - logit[contrast answer]      at the predicting position,

and the effect of a patch is ``mean LD_clean - mean LD_patched`` over a data set.

Positions: names are resolved per row by the task; a negative integer counts from each
row's last non-PAD token (:mod:`.positions`). Everything runs in batches (bounded memory, a
``tqdm.auto`` bar unless ``progress=False``); all node sets of one call are measured in a
single pass over the data (one clean forward, one source forward and one patched forward
per distinct node set per batch). Results: :class:`~.results.PatchingResult`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError, NotationError
from tl_inversion.patching._engine import _Engine, _node_keys, _patch_hook, _patch_ops, _prepare
from tl_inversion.patching.metrics import MetricLike, _metric_name
from tl_inversion.patching.notation import GroupLike, Node, NodeGroup, PositionLike, Resolver, parse_groups
from tl_inversion.patching.results import PatchingResult, bootstrap_ci
from tl_inversion.patching.sources import MeanAblation, Resample, SourceLike
from tl_inversion.tasks.contrast_set import ContrastSet


def _labelled_pairs(groups: Any) -> dict[str, Any] | None:
    """``{label: group}`` when ``groups`` is a list of ``(label, group)`` pairs whose labels
    are not node notation (e.g. ``list(d.items())``); ``None`` for every other form.
    """
    if isinstance(groups, (str, Mapping, NodeGroup, Node)) or not isinstance(groups, Sequence) or not groups:
        return None
    if not all(isinstance(g, (tuple, list)) and len(g) == 2 and isinstance(g[0], str) for g in groups):
        return None
    labels_are_nodes = []
    for label, _ in groups:
        try:
            Node.parse(label)
            labels_are_nodes.append(True)
        except (NotationError, ValueError):
            labels_are_nodes.append(False)
    if not any(labels_are_nodes):
        return {label: g for label, g in groups}
    if all(labels_are_nodes):
        return None  # tuples of two nodes: groups patched together (documented)
    raise InputTypeError(
        "groups mixes (label, group) pairs with tuples of nodes; pass a dict {label: group} "
        "(e.g. {'heads': 'a0@: + a1@:'}) or a list of groups"
    )


def _default_label_map(groups: Sequence[NodeGroup]) -> dict[str, NodeGroup]:
    out: dict[str, NodeGroup] = {}
    for g in groups:
        label = g.name
        k = 2
        while label in out and out[label] != g:
            label = f"{g.name} #{k}"
            k += 1
        out[label] = g
    return out


def run_patching(
    model: Any,
    groups: Mapping[str, GroupLike] | Sequence[GroupLike] | GroupLike,
    clean_tokens: Int[Tensor, "n pos"] | ContrastSet,
    source: SourceLike = "contrast",
    *,
    contrast_tokens: Tensor | None = None,  # [n, pos_c]; a row count != n gets _prepare's message
    answers: Tensor | None = None,  # [n]
    contrast_answers: Tensor | None = None,  # [n]
    metric: MetricLike = None,
    answer_position: PositionLike | None = None,
    positions: Resolver = None,
    batch_size: int = 256,
    trim_padding: bool = False,
    pad_id: int | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Patch each node group (separately) and keep the per-example metrics.

    All groups are measured in one pass over the data; identical node sets run once.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (put in eval mode for the call).
        groups: node groups: a mapping ``{label: group}``, a sequence of groups, or one
            group; a group is short notation (``"a1@:"``, ``"a0@tc + e_tok@tc"``), a
            :class:`~tl_inversion.patching.notation.Node`, a
            :class:`~tl_inversion.patching.notation.NodeGroup` or a tuple of nodes. A list of
            ``(label, group)`` pairs whose labels are not node notation is read as the dict
            it spells. A negative integer position (``"a1.0@-2"``) counts from each row's
            last non-PAD token (see :mod:`tl_inversion.patching.positions`).
        clean_tokens: ``[n, pos]`` token ids of the clean inputs, or a
            :class:`~tl_inversion.tasks.contrast_set.ContrastSet` (which supplies the contrast tokens,
            answers, positions and answer position unless given here).
        source: ``"contrast"``, ``"mean"``, ``"zero"``, ``"resample"``, a :class:`Source`, or
            an ``ActivationCache``/mapping (see the module docstring).
        contrast_tokens: ``[n, pos']`` paired contrast inputs (for ``"contrast"``).
        answers: ``[n]`` clean answer token ids (default metric).
        contrast_answers: ``[n]`` contrast answer token ids (default metric).
        metric: ``None`` = :class:`LogitDiff`; else ``f(logits [b, pos, vocab])`` or
            ``f(logits, ctx: MetricContext)`` returning one value per row (preferred: CIs
            over examples) or a scalar per batch (CIs over batches).
        answer_position: the predicting position (a name such as ``":"`` or an int).
        positions: resolver of named positions (a task such as counting's ``make_task()``
            or a dict ``{name: fn(tokens) -> [n]}``).
        batch_size: rows per forward (256 suits small models on CPU, where cache locality
            matters; raise it on a GPU).
        trim_padding: crop trailing PAD columns per batch and batch rows of similar width
            (exact for causal models; faster on padded data). Needs a PAD id (``pad_id`` or
            the task's).
        pad_id: PAD token id for ``trim_padding`` and for negative positions (default: the
            task's ``pad_id`` when ``positions`` is a task).
        progress: show ``tqdm.auto`` progress bars (terminal or notebook); ``False`` hides them.

    Returns:
        A :class:`PatchingResult`; ``.table()`` gives the DataFrame.

    Raises:
        SiteError: a node's hook or head does not fit the model.
        PositionError: a position cannot be resolved (unknown name, out of range).
        InputValueError: missing inputs for the chosen source or metric, mismatched row counts.
        InputTypeError: ``positions`` is not a task, a dict or ``None``; ``groups`` mixes
            ``(label, group)`` pairs with tuples of nodes.
    """
    pairs = _labelled_pairs(groups)
    groups = pairs if pairs is not None else groups
    parsed = parse_groups(groups)
    label_map = (
        {str(k): NodeGroup.parse(v, label=str(k)) for k, v in groups.items()}
        if isinstance(groups, Mapping)
        else _default_label_map(parsed)
    )
    label_map = {k: NodeGroup(tuple(n.validate(model) for n in g.nodes), g.label) for k, g in label_map.items()}
    data = _prepare(
        clean_tokens, source, contrast_tokens, answers, contrast_answers, metric, answer_position, positions,
        trim_padding, pad_id,
    )
    engine = _Engine(model, data, batch_size, progress, desc=f"patching ({data.source.kind})")
    all_nodes = [n for g in label_map.values() for n in g.nodes]
    engine.check_positions([s for n in all_nodes for s in (n.positions or (None,))] + [data.answer_position])
    keys = _node_keys(all_nodes)
    if isinstance(data.source, MeanAblation):
        engine.compute_means(keys)
    # distinct node sets, each run once
    unique: dict[frozenset, list[str]] = {}
    for label, g in label_map.items():
        unique.setdefault(frozenset(g.nodes), []).append(label)

    n = data.clean.shape[0]
    clean_vals, contrast_vals, weights = [], [], []
    patched_vals: dict[frozenset, list[Tensor]] = {k: [] for k in unique}
    order: list[Tensor] = []
    per_example = None
    common = any(k[2] is None for k in keys)  # patching every position needs equal widths
    for rows in engine.batches():
        clean, src_toks = engine.crop(rows, data.clean, data.source_tokens, common)
        clean_logits = engine.run(clean)
        m_clean = engine.metric(clean_logits, engine.ctx(rows, clean, clean, "clean"))
        values, src_logits = engine.source_values(rows, clean, src_toks, keys)
        if src_logits is not None:
            contrast_vals.append(engine.metric(src_logits, engine.ctx(rows, src_toks, clean, "contrast")))
        idx_cache: dict[PositionLike, Tensor] = {}
        for nodes in unique:
            ops = _patch_ops(nodes, clean, values, data.positions, engine.device, idx_cache)
            logits = engine.run(clean, [(h, _patch_hook(o)) for h, o in ops.items()])
            patched_vals[nodes].append(engine.metric(logits, engine.ctx(rows, clean, clean, "patched")))
        is_scalar = m_clean.dim() == 0
        per_example = (not is_scalar) if per_example is None else per_example
        if per_example == is_scalar:
            raise InputValueError("the metric returned a scalar for some batches and per-row values for others")
        clean_vals.append(m_clean)
        order.append(rows)
        if per_example:
            weights.append(torch.ones(rows.shape[0], dtype=torch.float64))
        else:
            weights.append(torch.tensor([float(rows.shape[0])]))

    def gather(chunks: list[Tensor]) -> np.ndarray:
        if not chunks:
            return np.zeros(0)
        if per_example:
            out = torch.empty(n, dtype=torch.float64)
            out[torch.cat(order)] = torch.cat([c.reshape(-1) for c in chunks])
            return out.numpy()
        return torch.stack([c.reshape(()) for c in chunks]).numpy()

    w = np.ones(n) if per_example else torch.cat(weights).numpy()
    patched = {label: gather(patched_vals[key]) for key, labels in unique.items() for label in labels}
    patched = {label: patched[label] for label in label_map}
    settings = {
        **data.source.describe(),
        "metric": _metric_name(data.metric),
        "answer_position": data.answer_position,
        "n": n,
        "per_example": bool(per_example),
        "trim_padding": data.trim,
        "batch_size": batch_size,
        "model_class": type(model).__name__,
    }
    if isinstance(data.source, Resample):
        settings["seed"] = data.source.seed if isinstance(data.source.seed, int) else "generator"
    return PatchingResult(
        groups=label_map,
        clean=gather(clean_vals),
        patched=patched,
        contrast=gather(contrast_vals) if contrast_vals else None,
        weights=w,
        settings=settings,
    )


def patch_nodes(
    model: Any,
    groups: Mapping[str, GroupLike] | Sequence[GroupLike] | GroupLike,
    clean_tokens: Int[Tensor, "n pos"] | ContrastSet,
    source: SourceLike = "contrast",
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """Activation patching of nodes or groups, each on its own; a table per group.

    Same arguments as :func:`run_patching` (``kwargs``) plus the bootstrap settings.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        groups: the node groups: a list (``["a1@:", "a0@:", "a0@tc + e_tok@tc"]``, rows
            labelled by the notation), a dict ``{label: group}``, or a list of ``(label,
            group)`` pairs (read as that dict).
        clean_tokens: ``[n, pos]`` clean inputs or a ``ContrastSet``.
        source: where patched values come from (``"contrast"`` by default).
        n_boot: bootstrap resamples for the CI of the effect.
        ci: CI coverage.
        seed: bootstrap seed.
        **kwargs: passed to :func:`run_patching` (``contrast_tokens``, ``metric``, ...).

    Returns:
        DataFrame indexed by group label with ``LD_clean``, ``LD_patched``, ``effect``,
        ``ci_low``, ``ci_high``, ``normalised`` (see :meth:`PatchingResult.table`).

    Raises:
        InputTypeError, InputValueError, SiteError, PositionError: see :func:`run_patching`.

    Example:
        >>> cs = counting_random_contrasts(paper_split("test"), generator=0)  # doctest: +SKIP
        >>> patch_nodes(model, ["a1@:", "a0@:"], cs)                          # doctest: +SKIP
    """
    return run_patching(model, groups, clean_tokens, source, **kwargs).table(n_boot=n_boot, ci=ci, seed=seed)


def cumulative_patching(
    model: Any,
    order: Sequence[GroupLike] | Mapping[str, GroupLike],
    clean_tokens: Int[Tensor, "n pos"] | ContrastSet,
    source: SourceLike = "contrast",
    *,
    direction: str = "both",
    singles: bool = False,
    extra: Sequence[GroupLike] | Mapping[str, GroupLike] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """Cumulative patching: add the groups one by one, in the given order and/or reversed.

    InversionView's counting verification (Sec. 4.1) patches forward (embeddings first) and
    backward (last head first), reporting the cumulative effect after each step; the
    increments show what each group adds given the ones before.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        order: the groups in forward order, e.g.
            ``["e_pos@tc,:", "a0@tc + e_tok@tc", "a0@:", "a1@:"]`` (or ``{label: group}``).
        clean_tokens: clean inputs or a ``ContrastSet``.
        source: where patched values come from.
        direction: ``"forward"``, ``"backward"`` or ``"both"``.
        singles: also report each group alone (``direction == "single"`` rows).
        extra: more groups to report alone (``"single"`` rows), measured in the same pass.
        n_boot: bootstrap resamples for the confidence interval (0: none).
        ci: confidence level of the interval.
        seed: seed of the bootstrap.
        **kwargs: passed to :func:`run_patching`.

    Returns:
        DataFrame with columns ``direction``, ``step`` (1..), ``added`` (the group added at
        this step), ``nodes`` (all patched nodes), ``n``, ``LD_clean``, ``LD_patched``,
        ``effect`` (cumulative), ``ci_low``/``ci_high`` (its bootstrap CI), ``increment``
        (effect minus the previous step's), ``inc_ci_low``/``inc_ci_high`` (paired bootstrap CI
        of the increment), ``normalised``.

    Raises:
        ValueError: an unknown ``direction``; see :func:`run_patching` for the rest.
    """
    if direction not in ("forward", "backward", "both"):
        raise InputValueError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")
    items = list(order.items()) if isinstance(order, Mapping) else [(None, g) for g in order]
    groups = [NodeGroup.parse(g, label=lab) for lab, g in items]
    if not groups:
        raise InputValueError("cumulative patching needs at least one group")
    dirs = ["forward", "backward"] if direction == "both" else [direction]
    sets: dict[str, NodeGroup] = {}
    plan: list[tuple[str, int, str, str]] = []  # (direction, step, added label, set key)
    for d in dirs:
        seq = groups if d == "forward" else groups[::-1]
        acc: tuple = ()
        for step, g in enumerate(seq, 1):
            acc = acc + g.nodes
            key = f"{d}:{step}"
            sets[key] = NodeGroup(acc, label=" + ".join(x.name for x in seq[:step]))
            plan.append((d, step, g.name, key))
    alone = list(groups) if singles else []
    if extra is not None:
        alone += (
            parse_groups(extra)
            if not isinstance(extra, Mapping)
            else [NodeGroup.parse(v, label=str(k)) for k, v in extra.items()]
        )
    for i, g in enumerate(alone):
        key = f"single:{i}"
        sets[key] = g
        plan.append(("single", i + 1, g.name, key))
    res = run_patching(model, sets, clean_tokens, source, **kwargs)
    rows = []
    prev: dict[str, str | None] = {}
    for d, step, added, key in plan:
        r = res.row(key, n_boot=n_boot, ci=ci, seed=seed)
        r.pop("group")
        r["nodes"] = sets[key].name
        before = prev.get(d) if d != "single" else None
        if before is None:
            inc, inc_vals = r["effect"], res.effect_values(key)
        else:
            inc = r["effect"] - res.row(before, n_boot=0)["effect"]
            inc_vals = res.patched[before] - res.patched[key]
        lo, hi = bootstrap_ci(inc_vals, res.weights, n_boot=n_boot, ci=ci, seed=seed)
        rows.append(
            {"direction": d, "step": step, "added": added, **r, "increment": inc, "inc_ci_low": lo, "inc_ci_high": hi}
        )
        prev[d] = key
    df = pd.DataFrame(rows)
    cols = [
        "direction",
        "step",
        "added",
        "nodes",
        "n",
        "LD_clean",
        "LD_patched",
        "effect",
        "ci_low",
        "ci_high",
        "increment",
        "inc_ci_low",
        "inc_ci_high",
        "normalised",
        "LD_contrast",
        "normalised_by",
    ]
    df = df[cols]
    df.attrs.update(res.settings)
    return df


__all__ = ["cumulative_patching", "patch_nodes", "run_patching"]
