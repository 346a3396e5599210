"""The steps of path patching: hook order, receivers' hooks, q/k/v inputs, the two runs.

Private to :mod:`tl_inversion.patching.path` (whose docstring describes the method); split
from it to keep each module short. ``receiver_hook`` and ``split_qkv_inputs`` are
re-exported there.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.patching._engine import _Engine, _Op, _patch_ops, _recorder, _select_head
from tl_inversion.patching.notation import Edge, Node, PositionLike, resolve_position

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


def receiver_hook(edge: Edge, projected: bool = False) -> tuple[str, int | None]:
    """The hook (and head) that step 2 patches for an edge's receiver.

    Args:
        edge: the edge.
        projected: for q/k/v inputs, the per-head projections ``blocks.L.attn.hook_{q,k,v}``
            (``[batch, pos, head, d_head]``) instead of the split inputs
            ``blocks.L.hook_{q,k,v}_input`` (``[batch, pos, head, d_model]``).
    """
    if edge.input == "resid":
        return edge.receiver.hook, edge.receiver.head
    layer = edge.receiver.layer
    if projected:
        return f"blocks.{layer}.attn.hook_{edge.input}", edge.receiver.head
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


class _SplitRefusedError(InputValueError):
    """The model refuses ``set_use_split_qkv_input`` (path patching then projects q/k/v)."""


@contextlib.contextmanager
def split_qkv_inputs(model: Any) -> Iterator[None]:
    """Turn on per-head q/k/v input hooks for the block; restore the model's flags after.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.

    Raises:
        InputValueError: the model refuses the flag (the message suggests ``input="resid"``).
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
                raise _SplitRefusedError(
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


def _check_projected(model: Any, edges: Sequence[Edge], refusal: Exception) -> None:
    """Refuse q/k/v receivers that the per-head projections cannot serve (say why).

    Raises:
        InputValueError: a projection hook the model does not list, or k/v receivers on a
            model whose keys/values are shared by several query heads.
    """
    names = model.hook_dict
    n_heads = int(model.cfg.n_heads)
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    for e in edges:
        if e.input == "resid":
            continue
        hook = receiver_hook(e, projected=True)[0]
        resid = f"blocks.{e.receiver.layer}.hook_resid_pre"
        if resid not in names:
            hook = resid
        if hook not in names:
            raise InputValueError(
                f"edge {e.name!r}: {refusal}; the per-head projection {hook} that could stand in for it is not "
                "in the model's hook_dict either. Use the receiver through the residual (input 'resid') instead"
            ) from refusal
        if e.input in ("k", "v") and n_kv is not None and int(n_kv) != n_heads:
            raise InputValueError(
                f"edge {e.name!r}: {refusal}; and {hook} holds {n_kv} key/value heads shared by {n_heads} query "
                "heads (grouped-query attention), so one query head's key/value input cannot be patched alone. "
                "Use a q receiver or the receiver through the residual (input 'resid') instead"
            ) from refusal


def _freeze_hooks(model: Any, freeze_mlps: bool) -> list[str]:
    names = set(model.hook_dict.keys())
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    if freeze_mlps and not getattr(model.cfg, "attn_only", False):
        mlps = [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)]
        hooks += [h for h in mlps if h in names]
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


class _PathRun:
    """The two steps of path patching on one batch of rows (see the module docstring)."""

    def __init__(
        self,
        engine: _Engine,
        sets: Mapping[str, tuple[Edge, ...]],
        senders: Sequence[Node],
        sender_keys: Sequence[tuple[str, int | None, PositionLike | None]],
        freeze: Sequence[str],
        projected: bool,
    ) -> None:
        self.engine = engine
        self.sets = sets
        self.senders = senders
        self.sender_keys = sender_keys
        self.freeze = list(freeze)
        self.projected = projected
        self.edges = [e for v in sets.values() for e in v]
        self.recv_hooks = sorted({h for e in self.edges for h in self.recorded_hooks(e)})

    def receiver(self, edge: Edge) -> tuple[str, int | None]:
        """The hook (and head) step 2 writes for an edge's receiver."""
        return receiver_hook(edge, self.projected)

    def recorded_hooks(self, edge: Edge) -> list[str]:
        """What step 1 records for an edge: the receiver's hook; for projected q/k/v also the
        residual stream entering the receiver's block (several senders add up there).
        """
        hooks = [self.receiver(edge)[0]]
        if self.projected and edge.input != "resid":
            hooks.append(f"blocks.{edge.receiver.layer}.hook_resid_pre")
        return hooks

    def batch(self, rows: Tensor) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Metrics of the clean run, the source run (``None`` without one) and each edge set."""
        engine, data = self.engine, self.engine.data
        full_width = any(k[2] is None for k in self.sender_keys)
        clean, src_toks = engine.crop(rows, data.clean, data.source_tokens, full_width)
        base: dict[str, Tensor] = {}
        base_hooks = sorted(set(self.freeze) | set(self.recv_hooks))
        clean_logits = engine.run(clean, [(h, _recorder(base, h)) for h in base_hooks])
        m_clean = engine.metric(clean_logits, engine.ctx(rows, clean, clean, "clean"))
        values, src_logits = engine.source_values(rows, clean, src_toks, self.sender_keys)
        m_contrast = None
        if src_logits is not None:
            m_contrast = engine.metric(src_logits, engine.ctx(rows, src_toks, clean, "contrast"))
        idx_cache: dict[PositionLike, Tensor] = {}
        recorded = {s: self.step1(s, clean, values, base, idx_cache) for s in self.senders}
        patched = {}
        for label, es in self.sets.items():
            logits = engine.run(clean, self.step2_hooks(es, clean, base, recorded, idx_cache))
            patched[label] = engine.metric(logits, engine.ctx(rows, clean, clean, "patched"))
        return m_clean, m_contrast, patched

    def step1(
        self,
        sender: Node,
        clean: Tensor,
        values: Mapping[Any, Tensor | None],
        base: Mapping[str, Tensor],
        idx_cache: dict[PositionLike, Tensor],
    ) -> dict[str, Tensor]:
        """One run with the sender patched and every other component frozen; the receivers' hooks."""
        engine = self.engine
        my_hooks = sorted({h for e in self.edges if e.sender == sender for h in self.recorded_hooks(e)})
        sender_ops = _patch_ops([sender], clean, values, engine.data.positions, engine.device, idx_cache)
        store: dict[str, Tensor] = {}
        fwd = []
        for h in sorted(set(self.freeze) | set(sender_ops) | set(my_hooks)):
            ops = ([_Op(None, None, base[h])] if h in self.freeze else []) + sender_ops.get(h, [])
            fwd.append((h, _step1_hook(store, h if h in my_hooks else None, ops)))
        engine.run(clean, fwd)
        return store

    def step2_hooks(
        self,
        edges: Sequence[Edge],
        clean: Tensor,
        base: Mapping[str, Tensor],
        recorded: Mapping[Node, Mapping[str, Tensor]],
        idx_cache: dict[PositionLike, Tensor],
    ) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
        """Hooks writing the receivers' recorded inputs (several senders' changes add up)."""
        engine = self.engine
        targets: dict[tuple[str, int | None, PositionLike | None], Tensor] = {}
        sources: dict[tuple[str, int | None, PositionLike | None], list[Edge]] = {}
        for e in edges:
            hook, head = self.receiver(e)
            b_full = _select_head(base[hook], head)
            r_full = _select_head(recorded[e.sender][hook], head)
            for spec in e.receiver.positions if e.receiver.positions is not None else (None,):
                if spec is not None and spec not in idx_cache:
                    idx_cache[spec] = resolve_position(clean, spec, engine.data.positions).to(engine.device)
                b_val, r_val = _at(b_full, spec, idx_cache), _at(r_full, spec, idx_cache)
                key = (hook, head, spec)
                targets[key] = targets.get(key, b_val) + (r_val - b_val)
                sources.setdefault(key, []).append(e)
        for key, es in sources.items():
            if self.projected and len(es) > 1 and es[0].input != "resid":
                targets[key] = self.project(key, es, clean, base, recorded, idx_cache)
        ops: dict[str, list[_Op]] = {}
        for (hook, head, spec), val in targets.items():
            ops.setdefault(hook, []).append(_Op(head, None if spec is None else idx_cache[spec], val))
        return [(h, _step1_hook({}, None, o)) for h, o in ops.items()]

    def project(
        self,
        key: tuple[str, int | None, PositionLike | None],
        edges: Sequence[Edge],
        clean: Tensor,
        base: Mapping[str, Tensor],
        recorded: Mapping[Node, Mapping[str, Tensor]],
        idx_cache: dict[PositionLike, Tensor],
    ) -> Tensor:
        """Several senders into one projected q/k/v: their changes add in the residual stream
        (as with split inputs), so one more forward projects the summed residual through the
        block's own LayerNorm and W_Q/W_K/W_V. q/k/v at a position depend on the residual
        stream at that position only, so the whole stream is replaced.
        """
        hook, head, spec = key
        resid = f"blocks.{edges[0].receiver.layer}.hook_resid_pre"
        summed = base[resid].clone()
        for e in edges:
            summed += recorded[e.sender][resid] - base[resid]
        store: dict[str, Tensor] = {}
        self.engine.run(clean, [(resid, lambda x, hook: summed), (hook, _recorder(store, hook))])
        return _at(_select_head(store[hook], head), spec, idx_cache)


def _at(x: Tensor, spec: PositionLike | None, idx_cache: Mapping[PositionLike, Tensor]) -> Tensor:
    """Each row of ``x`` ``[batch, pos, ...]`` at its resolved position (all positions for ``None``)."""
    if spec is None:
        return x
    return x[torch.arange(x.shape[0], device=x.device), idx_cache[spec]]
