"""Path patching: the effect of a sender on chosen receivers only.

Activation patching of a node changes everything downstream of it. Path patching (Wang et
al. 2022, "Interpretability in the Wild", Sec. 3.1 and App. B; Goldowsky-Dill et al. 2023)
asks how much of that effect flows along particular paths: from a *sender* node into some
*receivers*, entering each receiver through one named input:

* ``"q"``, ``"k"``, ``"v"``: a head's query, key or value input (TransformerLens's per-head
  ``blocks.L.hook_{q,k,v}_input``, which needs ``set_use_split_qkv_input(True)``; the flag is
  set for the call and restored in ``finally``, on ``HookedTransformer`` and on
  ``TransformerBridge`` alike);
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

import contextlib
import re
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.patching._engine import _Engine, _node_keys, _Op, _patch_ops, _prepare, _recorder, _select_head
from tl_inversion.patching._warn import NoEffectEdgeWarning
from tl_inversion.patching.metrics import MetricLike, _metric_name
from tl_inversion.patching.notation import Edge, EdgeLike, Node, NodeGroup, PositionLike, Resolver, resolve_position
from tl_inversion.patching.results import PatchingResult
from tl_inversion.patching.sources import MeanAblation, SourceLike
from tl_inversion.tasks.contrast_set import ContrastSet

_STAGES = (
    ("hook_resid_pre", 0),
    ("hook_q_input", 1),
    ("hook_k_input", 1),
    ("hook_v_input", 1),
    ("hook_attn_in", 1),
    ("ln1.", 1),
    ("attn.", 2),
    ("hook_attn_out", 3),
    ("hook_resid_mid", 4),
    ("hook_mlp_in", 5),
    ("ln2.", 5),
    ("mlp.", 6),
    ("hook_mlp_out", 7),
    ("hook_resid_post", 8),
)


def _hook_order(hook: str) -> tuple[float, int] | None:
    """(layer, stage) of a hook in the forward pass, or ``None`` when unknown."""
    if hook in ("hook_embed", "hook_pos_embed", "hook_tokens") or hook.startswith(("embed.", "pos_embed.")):
        return (-1.0, 0)
    if hook.startswith(("ln_final", "unembed")):
        return (float("inf"), 0)
    m = re.match(r"^blocks\.(\d+)\.(.*)$", hook)
    if not m:
        return None
    rest = m.group(2)
    for prefix, stage in _STAGES:
        if rest.startswith(prefix):
            return (float(m.group(1)), stage)
    return None


def receiver_hook(edge: Edge) -> tuple[str, int | None]:
    """The hook (and head) that step 2 patches for an edge's receiver."""
    if edge.input == "resid":
        return edge.receiver.hook, edge.receiver.head
    layer = edge.receiver.layer
    return f"blocks.{layer}.hook_{edge.input}_input", edge.receiver.head


def _check_edge(edge: Edge, model: Any) -> Edge:
    edge = Edge(edge.sender.validate(model), edge.receiver.validate(model), edge.input)
    s = _hook_order(edge.sender.hook)
    r = _hook_order(receiver_hook(edge)[0])
    if s is not None and r is not None and not s < r:
        raise InputValueError(
            f"edge {edge.name!r}: the receiver's input ({receiver_hook(edge)[0]}) is computed before or together "
            f"with the sender ({edge.sender.hook}); a path runs from an earlier sender to a later receiver"
        )
    return edge


@contextlib.contextmanager
def split_qkv_inputs(model: Any) -> Iterator[None]:
    """Turn on per-head q/k/v input hooks for the block; restore the model's flags after.

    Raises:
        ValueError: the model refuses the flag (the message suggests ``input="resid"``).
    """
    saved_split = bool(getattr(model.cfg, "use_split_qkv_input", False))
    saved_attn_in = bool(getattr(model.cfg, "use_attn_in", False))
    changed_attn_in = changed_split = False
    try:
        if saved_attn_in and hasattr(model, "set_use_attn_in"):
            model.set_use_attn_in(False)  # the two forks are mutually exclusive
            changed_attn_in = True
        if not saved_split:
            try:
                model.set_use_split_qkv_input(True)
            except Exception as e:
                raise InputValueError(
                    f"{type(model).__name__} refuses set_use_split_qkv_input ({e}); q/k/v receivers need it. "
                    "Use receivers through the residual (input 'resid') instead"
                ) from e
            changed_split = True
        yield
    finally:
        if changed_split:
            model.set_use_split_qkv_input(False)
        if changed_attn_in:
            model.set_use_attn_in(True)


def _freeze_hooks(model: Any, freeze_mlps: bool) -> list[str]:
    names = set(model.hook_dict.keys())
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    if freeze_mlps and not getattr(model.cfg, "attn_only", False):
        hooks += [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers) if f"blocks.{layer}.hook_mlp_out" in names]
    return hooks


def _step1_hook(store: dict[str, Tensor], record: str | None, ops: list[_Op]) -> Callable[[Tensor, Any], Tensor]:
    def hook_fn(x: Tensor, hook: Any) -> Tensor:  # closes over its hook name: never reads hook.name
        if record is not None:
            store[record] = x.detach().clone()  # the incoming value, before any freezing
        if not ops:
            return x
        x = x.clone()
        for op in ops:
            op.apply(x)
        return x

    return hook_fn


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
        contrast_tokens, answers, contrast_answers, metric, answer_position, positions,
        batch_size, trim_padding, pad_id, progress: as in
            :func:`tl_inversion.patching.run_patching`.

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
    # receivers: (hook, head) per edge; the hooks each sender's step-1 run must record
    recv_hooks = sorted({receiver_hook(e)[0] for e in all_edges})
    freeze = _freeze_hooks(model, freeze_mlps)
    needs_split = any(e.input != "resid" for e in all_edges)

    n = data.clean.shape[0]
    order: list[Tensor] = []
    clean_vals: list[Tensor] = []
    contrast_vals: list[Tensor] = []
    patched_vals: dict[str, list[Tensor]] = {k: [] for k in sets}
    per_example = None
    ctx_mgr = split_qkv_inputs(model) if needs_split else contextlib.nullcontext()
    with ctx_mgr:
        for rows in engine.batches():
            clean, src_toks = engine.crop(rows, data.clean, data.source_tokens, any(k[2] is None for k in sender_keys))
            base: dict[str, Tensor] = {}
            base_hooks = sorted(set(freeze) | set(recv_hooks))
            clean_logits = engine.run(clean, [(h, _recorder(base, h)) for h in base_hooks])
            m_clean = engine.metric(clean_logits, engine.ctx(rows, clean, clean, "clean"))
            values, src_logits = engine.source_values(rows, clean, src_toks, sender_keys)
            if src_logits is not None:
                contrast_vals.append(engine.metric(src_logits, engine.ctx(rows, src_toks, clean, "contrast")))
            idx_cache: dict[PositionLike, Tensor] = {}
            # step 1: one run per sender, everything else frozen; record the receivers' hooks
            recorded: dict[Node, dict[str, Tensor]] = {}
            for sender in senders:
                my_hooks = sorted({receiver_hook(e)[0] for e in all_edges if e.sender == sender})
                sender_ops = _patch_ops([sender], clean, values, data.positions, engine.device, idx_cache)
                store: dict[str, Tensor] = {}
                hook_names = sorted(set(freeze) | set(sender_ops) | set(my_hooks))
                fwd = []
                for h in hook_names:
                    ops = ([_Op(None, None, base[h])] if h in freeze else []) + sender_ops.get(h, [])
                    fwd.append((h, _step1_hook(store, h if h in my_hooks else None, ops)))
                engine.run(clean, fwd)
                recorded[sender] = store
            # step 2: per edge set, patch only the receivers' inputs
            for label, es in sets.items():
                targets: dict[tuple[str, int | None, PositionLike | None], Tensor] = {}
                for e in es:
                    hook, head = receiver_hook(e)
                    for spec in e.receiver.positions if e.receiver.positions is not None else (None,):
                        key = (hook, head, spec)
                        b_full = _select_head(base[hook], head)
                        r_full = _select_head(recorded[e.sender][hook], head)
                        if spec is None:
                            b_val, r_val = b_full, r_full
                        else:
                            if spec not in idx_cache:
                                idx_cache[spec] = resolve_position(clean, spec, data.positions).to(engine.device)
                            ar = torch.arange(b_full.shape[0], device=b_full.device)
                            b_val, r_val = b_full[ar, idx_cache[spec]], r_full[ar, idx_cache[spec]]
                        targets[key] = targets.get(key, b_val) + (r_val - b_val)
                ops: dict[str, list[_Op]] = {}
                for (hook, head, spec), val in targets.items():
                    ops.setdefault(hook, []).append(_Op(head, None if spec is None else idx_cache[spec], val))
                fwd = [(h, _step1_hook({}, None, o)) for h, o in ops.items()]
                logits = engine.run(clean, fwd)
                patched_vals[label].append(engine.metric(logits, engine.ctx(rows, clean, clean, "patched")))
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
            ``["a0@tc -> a1.v@:", "a0@tc -> a1.q@:", "a0@tc -> a1.k@:"]``.
        clean_tokens: clean inputs or a ``ContrastSet``.
        source: the sender's new value (``"contrast"`` by default).
        n_boot, ci, seed: bootstrap settings.
        **kwargs: see :func:`run_path_patching` (``freeze_mlps``, ``metric``, ...).

    Returns:
        DataFrame indexed by edge-set label with ``edges``, ``n``, ``LD_clean``,
        ``LD_patched``, ``effect`` (``LD_clean - LD_patched``), ``ci_low``/``ci_high``,
        ``normalised``, ``LD_contrast``; ``df.attrs`` holds the settings.

    Raises:
        InputValueError, SiteError, PositionError: see :func:`run_path_patching`.

    Warns:
        NoEffectEdgeWarning: an edge that cannot carry any effect by construction.
    """
    res = run_path_patching(model, edges, clean_tokens, source, **kwargs)
    df = res.table(n_boot=n_boot, ci=ci, seed=seed).rename(columns={"nodes": "edges"})
    df["edges"] = [res.descriptions[k] for k in df.index]
    return df
