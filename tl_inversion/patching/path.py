"""Path patching: the effect of a sender on chosen receivers only.

Activation patching of a node changes everything downstream of it. Path patching (Wang et
al. 2022, "Interpretability in the Wild", Sec. 3.1 and App. B; Goldowsky-Dill et al. 2023)
asks how much of that effect flows along particular paths: from a *sender* node into some
*receivers*, entering each receiver through one named input:

* ``"q"``, ``"k"``, ``"v"``: a head's query, key or value input (TransformerLens's per-head
  ``blocks.L.hook_{q,k,v}_input``, which needs ``set_use_split_qkv_input(True)``; the flag is
  set for the call and restored in ``finally``, on ``HookedTransformer`` and on
  ``TransformerBridge`` alike). Models that refuse the flag (a ``TransformerBridge`` built
  with ``boot_native``: its attention has no hook before the q/k/v projections) patch the
  head's projected ``blocks.L.attn.hook_{q,k,v}`` instead: step 1 records it, computed by
  the model from the patched residual stream through the block's own LayerNorm, so it is
  exactly what the split input would give after ``ln1`` and ``W_Q``/``W_K``/``W_V``; a model
  whose keys/values are shared between heads (grouped-query attention) cannot do this per
  head, and says so;
* ``"resid"``: the receiver's own hook value (a residual-stream site such as
  ``resid_post.1``, or a component such as an MLP or a head taking all its inputs).

The standard two-step method, on a batch of clean inputs:

1. run the clean input with the sender's activation replaced by the source value (from a
   contrast input, a cache, a mean, zeros or a resampled input) and every other component
   *frozen* to its clean value (every head output ``attn.hook_z``; every MLP output unless
   ``freeze_mlps=False``, which is the variant of Wang et al.'s IOI paper), recording the
   receivers' inputs: they now differ from the clean run only through the direct path from
   the sender;
2. run the clean input again with only the receivers' inputs replaced by the recorded
   values (everything downstream of the receivers is recomputed) and measure the metric.

Positions. With every head frozen, a sender changes the residual stream only at its own
positions, so an edge carries an effect only where the receiver's positions meet the
sender's. For ``q`` receivers the positions are query positions, for ``k``/``v`` key
positions (the head at every query position reads the patched keys/values there), for
``resid`` the patched positions. Examples on counting (``B S|c:n E``):

* ``"a0@tc -> a1.v@tc"``: layer-1 heads read, as values at key position ``tc``, what layer
  0 wrote there (the paper's path into the count);
* ``"a0@: -> a1.q@:"``: the query of layer 1 at ``:`` changed by layer 0's output at ``:``;
* ``"a0@tc -> a1.v@:"``: sender at ``tc``, value input at ``:``: the positions never meet,
  the effect is exactly 0, and a :class:`~tl_inversion.patching._warn.NoEffectEdgeWarning`
  says so.

Several senders into one receiver add their (frozen, hence additive) changes. With every
component frozen, the receiver input is exactly the clean one plus the sender's change in
its residual write, which is what TL 4's ``patching.get_act_patch_direct_path`` computes
(it starts from the corrupted input and adds clean-minus-corrupted: call this with the
roles of clean and contrast swapped to compare; a test does so where TL 4 ships it).
"""

from __future__ import annotations

__all__ = ["path_patch", "receiver_hook", "run_path_patching", "split_qkv_inputs"]

import contextlib
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.patching._engine import _Engine, _node_keys, _prepare
from tl_inversion.patching._path_steps import (
    _check_edge,
    _check_projected,
    _freeze_hooks,
    _PathRun,
    _SplitRefusedError,
    receiver_hook,
    split_qkv_inputs,
)
from tl_inversion.patching._warn import NoEffectEdgeWarning
from tl_inversion.patching.metrics import MetricLike, _metric_name
from tl_inversion.patching.notation import Edge, EdgeLike, Node, NodeGroup, PositionLike, Resolver, resolve_position
from tl_inversion.patching.results import PatchingResult
from tl_inversion.patching.sources import MeanAblation, SourceLike
from tl_inversion.tasks.contrast_set import ContrastSet


def _parse_edge_sets(edges: Any) -> dict[str, tuple[Edge, ...]]:
    if isinstance(edges, Mapping):
        out = {}
        for k, v in edges.items():
            v = [v] if isinstance(v, (str, Edge)) else list(v)
            out[str(k)] = tuple(Edge.parse(e) for e in v)
        return out
    if isinstance(edges, (str, Edge)):
        e = Edge.parse(edges)
        return {e.name: (e,)}
    out = {}
    for item in edges:
        if isinstance(item, (str, Edge)):
            e = Edge.parse(item)
            out[e.name] = (e,)
        else:
            es = tuple(Edge.parse(x) for x in item)
            out[" & ".join(e.name for e in es)] = es
    if not out:
        raise InputValueError("path patching needs at least one edge, e.g. 'a0@tc -> a1.v@:'")
    return out


def _position_mask(tokens: Tensor, node: Node, positions: Resolver) -> Tensor:
    """``[n, pos]`` bool: the positions a node names in each row (all when ``None``)."""
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    if node.positions is None:
        return mask.fill_(True)
    ar = torch.arange(tokens.shape[0])
    for spec in node.positions:
        mask[ar, resolve_position(tokens, spec, positions).cpu()] = True
    return mask


def _warn_disjoint_edges(edges: Sequence[Edge], tokens: Tensor, positions: Resolver) -> None:
    """Warn about edges whose sender positions meet their receiver positions in no row."""
    dead = []
    for e in dict.fromkeys(edges):
        meet = _position_mask(tokens, e.sender, positions) & _position_mask(tokens, e.receiver, positions)
        if not bool(meet.any()):
            dead.append(e.name)
    if dead:
        warnings.warn(
            f"edge(s) {', '.join(map(repr, dead))} cannot carry any effect: with the other heads frozen the sender "
            "changes the residual stream only at its own positions, and the receiver's input is read at other "
            "positions (for q the query positions, for k/v the key positions) in every row. Give the receiver the "
            "sender's positions (e.g. 'a0@tc -> a1.v@tc'); the effect reported is 0 by construction",
            NoEffectEdgeWarning,
            stacklevel=3,
        )


def run_path_patching(
    model: Any,
    edges: Mapping[str, Sequence[EdgeLike]] | Sequence[EdgeLike | Sequence[EdgeLike]] | EdgeLike,
    clean_tokens: Int[Tensor, "n pos"] | ContrastSet,
    source: SourceLike = "contrast",
    *,
    freeze_mlps: bool = True,
    contrast_tokens: Tensor | None = None,
    answers: Tensor | None = None,
    contrast_answers: Tensor | None = None,
    metric: MetricLike = None,
    answer_position: PositionLike | None = None,
    positions: Resolver = None,
    batch_size: int = 256,
    trim_padding: bool = False,
    pad_id: int | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Path patching by the two-step method; keeps per-example metrics.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        edges: what to patch: one edge (``"a0@tc -> a1.0.v@:"``), a sequence whose items are
            measured separately (an item may itself be a tuple of edges patched together),
            or ``{label: edges}``. See :class:`~tl_inversion.patching.notation.Edge` for
            inputs. Receiver positions are query positions for ``q``, key positions for
            ``k``/``v``, the patched positions for ``resid``; the sender's change reaches a
            receiver only at positions both name (``"a0@tc -> a1.v@tc"`` carries an effect,
            ``"a0@tc -> a1.v@:"`` cannot: see the module docstring).
        clean_tokens: ``[n, pos]`` clean inputs or a ``ContrastSet``.
        source: the sender's new value: ``"contrast"``, ``"mean"``, ``"zero"``,
            ``"resample"``, a ``Source`` or an ``ActivationCache`` (as in
            :func:`tl_inversion.patching.run_patching`).
        freeze_mlps: freeze MLP outputs in step 1 (direct paths only); ``False`` lets paths
            through MLPs count (Wang et al. 2022's IOI setting).
        contrast_tokens: ``[n, pos]`` contrast inputs (source ``"contrast"``).
        answers: ``[n]`` clean answer ids (for the default logit-difference metric).
        contrast_answers: ``[n]`` contrast answer ids.
        metric: the metric (see :func:`tl_inversion.patching.run_patching`).
        answer_position: where the metric reads the logits.
        positions: named positions (a task, a ``ContrastSet``'s resolver or a mapping).
        batch_size: rows per forward pass.
        trim_padding: crop trailing PAD columns per batch (needs ``pad_id``).
        pad_id: the PAD id (also checked: left-padded rows are refused).
        progress: show a progress bar.

    Returns:
        A :class:`~tl_inversion.patching.results.PatchingResult` (labels are the edge sets).

    Raises:
        InputValueError: a receiver that is not downstream of its sender, a model that
            refuses per-head q/k/v inputs, or missing inputs for the source or metric.
        SiteError, PositionError: as in activation patching.

    Warns:
        NoEffectEdgeWarning: an edge whose sender and receiver positions coincide in no row
            (its effect is 0 by construction).
    """
    sets = _parse_edge_sets(edges)
    sets = {k: tuple(_check_edge(e, model) for e in v) for k, v in sets.items()}
    data = _prepare(
        clean_tokens, source, contrast_tokens, answers, contrast_answers, metric, answer_position, positions,
        trim_padding, pad_id,
    )
    engine = _Engine(model, data, batch_size, progress, desc=f"path patching ({data.source.kind})")
    all_edges = [e for v in sets.values() for e in v]
    specs = [s for e in all_edges for n in (e.sender, e.receiver) for s in (n.positions or (None,))]
    engine.check_positions(specs + [data.answer_position])
    _warn_disjoint_edges(all_edges, data.clean, data.positions)
    senders: list[Node] = list(dict.fromkeys(e.sender for e in all_edges))
    sender_keys = _node_keys(senders)
    if isinstance(data.source, MeanAblation):
        engine.compute_means(sender_keys)
    freeze = _freeze_hooks(model, freeze_mlps)

    n = data.clean.shape[0]
    order: list[Tensor] = []
    clean_vals: list[Tensor] = []
    contrast_vals: list[Tensor] = []
    patched_vals: dict[str, list[Tensor]] = {k: [] for k in sets}
    per_example = None
    with contextlib.ExitStack() as stack:
        projected = False
        if any(e.input != "resid" for e in all_edges):
            try:
                stack.enter_context(split_qkv_inputs(model))
            except _SplitRefusedError as refusal:
                _check_projected(model, all_edges, refusal)
                projected = True
        run = _PathRun(engine, sets, senders, sender_keys, freeze, projected)
        for rows in engine.batches():
            m_clean, m_contrast, m_patched = run.batch(rows)
            if m_contrast is not None:
                contrast_vals.append(m_contrast)
            for label, val in m_patched.items():
                patched_vals[label].append(val)
            is_scalar = m_clean.dim() == 0
            per_example = (not is_scalar) if per_example is None else per_example
            clean_vals.append(m_clean)
            order.append(rows)

    def gather(chunks: list[Tensor]) -> np.ndarray:
        if per_example:
            out = torch.empty(n, dtype=torch.float64)
            out[torch.cat(order)] = torch.cat([c.reshape(-1) for c in chunks])
            return out.numpy()
        return torch.stack([c.reshape(()) for c in chunks]).numpy()

    weights = np.ones(n) if per_example else np.array([float(r.shape[0]) for r in order])
    groups = {k: NodeGroup(tuple(dict.fromkeys(n for e in v for n in (e.sender, e.receiver)))) for k, v in sets.items()}
    settings = {
        **data.source.describe(),
        "method": "path patching (2-step; Wang et al. 2022)",
        "freeze": "heads" + (" and MLPs" if freeze_mlps else " (MLPs recomputed)"),
        "qkv_receivers": "projected q/k/v" if projected else "split q/k/v inputs",
        "metric": _metric_name(data.metric),
        "answer_position": data.answer_position,
        "n": n,
        "model_class": type(model).__name__,
    }
    res = PatchingResult(
        groups=groups,
        clean=gather(clean_vals),
        patched={k: gather(v) for k, v in patched_vals.items()},
        contrast=gather(contrast_vals) if contrast_vals else None,
        weights=weights,
        settings=settings,
        descriptions={k: " & ".join(e.name for e in v) for k, v in sets.items()},
    )
    return res


def path_patch(
    model: Any,
    edges: Mapping[str, Sequence[EdgeLike]] | Sequence[EdgeLike | Sequence[EdgeLike]] | EdgeLike,
    clean_tokens: Int[Tensor, "n pos"] | ContrastSet,
    source: SourceLike = "contrast",
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """Path patching (Wang et al. 2022), one table row per edge set.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        edges: edges or edge sets (see :func:`run_path_patching`), e.g.
            ``["a0@tc -> a1.v@tc", "a0@: -> a1.q@:", "a0@tc -> a1.k@tc"]``.
        clean_tokens: clean inputs or a ``ContrastSet``.
        source: the sender's new value (``"contrast"`` by default).
        n_boot: bootstrap resamples for the confidence interval (0: none).
        ci: confidence level of the interval.
        seed: seed of the bootstrap.
        **kwargs: see :func:`run_path_patching` (``freeze_mlps``, ``metric``, ...).

    Returns:
        DataFrame indexed by edge-set label with ``edges``, ``n``, ``LD_clean``,
        ``LD_patched``, ``effect`` (``LD_clean - LD_patched``), ``ci_low``/``ci_high``,
        ``normalised``, ``LD_contrast``; ``df.attrs`` holds the settings.

    Raises:
        InputValueError, SiteError, PositionError: see :func:`run_path_patching`.

    Warns:
        NoEffectEdgeWarning: an edge that cannot carry any effect by construction.

    Example:
        On counting pairs (``m`` the probed model, ``pairs`` a ``ContrastSet``)::

            path_patch(m, ["a0@tc -> a1.v@tc"], pairs)  # layer 0's write at tc, read as values there
            path_patch(m, ["a0@tc -> a1.v@:"], pairs)   # warns NoEffectEdgeWarning: the sender
            # writes at tc only, the value input is read at ':'; the effect is 0 by construction
    """
    res = run_path_patching(model, edges, clean_tokens, source, **kwargs)
    df = res.table(n_boot=n_boot, ci=ci, seed=seed).rename(columns={"nodes": "edges"})
    df["edges"] = [res.descriptions[k] for k in df.index]
    return df
