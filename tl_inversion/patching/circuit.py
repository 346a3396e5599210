"""Circuit faithfulness: the metric with only a circuit intact, against the full model.

Every component that writes into the residual stream (token and position embeddings, each
head's output, each MLP's output) is ablated at every position except the (component,
position) pairs of the circuit's nodes (Wang et al. 2022, Sec. 4, "faithfulness"; Conmy et
al. 2023). The raw ratio ``metric_circuit / metric_full`` is misleading because an
ablated model rarely scores 0: a circuit that carries no information from the input still
scores what ablating *everything* scores. The result therefore leads with the normalised
score ``(circuit - all ablated) / (full - all ablated)`` (0 = no better than ablating every
component, 1 = the full model), lists the components that were ablated, and warns
(:class:`~tl_inversion.patching._warn.DisconnectedCircuitWarning`) when the circuit has no
path from the embeddings to the output.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.patching._engine import _Engine, _Op, _patch_hook, _prepare
from tl_inversion.patching._warn import DisconnectedCircuitWarning
from tl_inversion.patching.metrics import MetricLike, _metric_name
from tl_inversion.patching.notation import Circuit, GroupLike, Node, PositionLike, Resolver, resolve_position
from tl_inversion.patching.sources import MeanAblation, SourceLike
from tl_inversion.tasks.contrast_set import ContrastSet


@dataclass
class CircuitFaithfulness:
    """How much of the full model's metric a circuit keeps with everything else ablated.

    Args:
        normalised_score: ``(metric_circuit - metric_ablated) / (metric_full -
            metric_ablated)``: 0 = no better than ablating every component, 1 = as the full
            model. The number to read.
        ci_low, ci_high: bootstrap CI of ``normalised_score`` over the rows.
        score: the raw ratio ``metric_circuit / metric_full``; nonzero even for a circuit
            that carries nothing, because the fully ablated model keeps some metric.
        score_ci_low, score_ci_high: bootstrap CI of ``score``.
        metric_full, metric_circuit, metric_ablated: mean metric of the full model, of the
            model with everything outside the circuit ablated, and with every component
            ablated.
        n: rows.
        settings: the ablation settings (method, reference, alignment, components, metric);
            the numbers depend on them.
        circuit: the circuit scored.
        ablated: notation of the components ablated at every position (e.g. ``"m0"``,
            ``"a1.2"``), in forward order.
        partly_kept: notation of the components kept only at the circuit's positions (and
            ablated elsewhere), e.g. ``"a0.1@2,5"``.
        rows_without_path: rows in which no path runs from a kept embedding to the output
            at the predicting position (see :func:`circuit_faithfulness`).
    """

    normalised_score: float
    ci_low: float
    ci_high: float
    score: float
    score_ci_low: float
    score_ci_high: float
    metric_full: float
    metric_circuit: float
    metric_ablated: float
    n: int
    settings: dict[str, Any]
    circuit: Circuit
    ablated: tuple[str, ...] = ()
    partly_kept: tuple[str, ...] = ()
    rows_without_path: int = 0

    def __str__(self) -> str:
        ablated = ", ".join(self.ablated) or "none"
        partly = f"; kept only at the circuit's positions: {', '.join(self.partly_kept)}" if self.partly_kept else ""
        no_path = (
            f"; NO PATH from the embeddings to the output in {self.rows_without_path} rows"
            if self.rows_without_path
            else ""
        )
        return (
            f"faithfulness of {self.circuit.name!r}: normalised {self.normalised_score:.4f} "
            f"[{self.ci_low:.4f}, {self.ci_high:.4f}] (0 = all ablated, 1 = full model); "
            f"metric full {self.metric_full:.4f}, circuit {self.metric_circuit:.4f}, "
            f"all ablated {self.metric_ablated:.4f}; "
            f"raw ratio circuit/full {self.score:.4f}; ablation={self.settings.get('source')}, n={self.n}; "
            f"ablated at every position: {ablated}{partly}{no_path}"
        )

    __repr__ = __str__

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame with the scores, the metrics and the ablation settings."""
        row = {
            "circuit": self.circuit.name,
            "normalised_score": self.normalised_score,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "score": self.score,
            "score_ci_low": self.score_ci_low,
            "score_ci_high": self.score_ci_high,
            "metric_full": self.metric_full,
            "metric_circuit": self.metric_circuit,
            "metric_ablated": self.metric_ablated,
            "n": self.n,
            "ablated": ", ".join(self.ablated),
            "partly_kept": ", ".join(self.partly_kept),
            "rows_without_path": self.rows_without_path,
        }
        row.update(
            {
                f"ablation_{k}": (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                for k, v in self.settings.items()
            }
        )
        return pd.DataFrame([row]).set_index("circuit")


def _component_name(hook: str, head: int | None) -> str:
    """Short notation of a residual writer: ``e_tok``, ``e_pos``, ``aL.H``, ``mL``."""
    if hook == "hook_embed":
        return "e_tok"
    if hook == "hook_pos_embed":
        return "e_pos"
    layer = hook.split(".")[1]
    return f"a{layer}.{head}" if head is not None else f"m{layer}"


def _reaches_output(
    comps: Sequence[tuple[str, int | None]], keep: dict[tuple[str, int | None], Tensor], answer_idx: Tensor | None
) -> Tensor:
    """``[batch]`` bool: some path carries input information from a kept embedding to the output.

    Information enters the residual stream at the positions where an embedding is kept; a
    kept MLP at position p passes on what reached p; a kept head at query position q
    passes on what reached any key position <= q (causal attention), into position q. The
    output reads the residual at the predicting position (any position when ``None``).
    Components are visited in forward order; heads of one layer read the same residual.
    """
    first = next(iter(keep.values()))
    reach = torch.zeros_like(first)
    layer_heads: list[Tensor] = []
    current_layer = None
    for hook, head in comps:
        k = keep[(hook, head)].to(reach.device)
        if hook in ("hook_embed", "hook_pos_embed"):
            reach |= k
            continue
        layer = hook.split(".")[1]
        if current_layer is not None and layer != current_layer and layer_heads:
            for live in layer_heads:
                reach |= live
            layer_heads = []
        current_layer = layer
        if head is not None:  # attention reads keys <= q, all from the layer's input
            before = reach.long().cummax(-1).values.bool()
            layer_heads.append(k & before)
        else:  # an MLP acts per position: it adds no position the residual has not reached
            for live in layer_heads:
                reach |= live
            layer_heads = []
    for live in layer_heads:
        reach |= live
    if answer_idx is None:
        return reach.any(-1)
    return reach[torch.arange(reach.shape[0]), answer_idx.to(reach.device)]


def _components(model: Any) -> list[tuple[str, int | None]]:
    """Every component writing into the residual stream: (hook, head)."""
    names = set(model.hook_dict.keys())
    comps: list[tuple[str, int | None]] = []
    for h in ("hook_embed", "hook_pos_embed"):
        if h in names:
            comps.append((h, None))
    for layer in range(model.cfg.n_layers):
        comps += [(f"blocks.{layer}.attn.hook_z", head) for head in range(model.cfg.n_heads)]
        if not getattr(model.cfg, "attn_only", False) and f"blocks.{layer}.hook_mlp_out" in names:
            comps.append((f"blocks.{layer}.hook_mlp_out", None))
    return comps


def _component_of(node: Node, model: Any) -> list[tuple[str, int | None]]:
    site = node.site
    if site.hook in ("hook_embed", "hook_pos_embed") or site.hook.endswith("hook_mlp_out"):
        return [(site.hook, None)]
    if node.is_attention:
        heads = range(model.cfg.n_heads) if site.head is None else [site.head]
        return [(node.hook, h) for h in heads]
    raise InputValueError(
        f"faithfulness keeps components intact; {node.notation!r} ({site}) is not one. Use e_tok, e_pos, "
        "aL / aL.H (head outputs) or mL (MLP outputs)"
    )


def _bootstrap_scores(
    f: np.ndarray, c: np.ndarray, a: np.ndarray, n_boot: int, ci: float, seed: int
) -> tuple[float, float, float, float]:
    """Percentile CIs of the normalised score and of the raw ratio from row resamples.

    Args:
        f: ``[n]`` metric of the full model per row.
        c: ``[n]`` metric with the circuit kept.
        a: ``[n]`` metric with everything ablated.
        n_boot: resamples (0: no interval).
        ci: confidence level.
        seed: seed of the resampling.

    Returns:
        ``(norm_low, norm_high, ratio_low, ratio_high)``; NaN where not computable.
    """
    n = f.shape[0]
    lo = hi = s_lo = s_hi = float("nan")
    if n_boot <= 0 or n <= 1:
        return lo, hi, s_lo, s_hi
    rng = np.random.default_rng(seed)
    ratios, norms = [], []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        bf, bc, ba = f[i].mean(), c[i].mean(), a[i].mean()
        ratios.append(bc / bf if bf else np.nan)
        norms.append((bc - ba) / (bf - ba) if bf != ba else np.nan)
    qs = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    if np.isfinite(ratios).any():
        s_lo, s_hi = (float(q) for q in np.nanquantile(ratios, qs))
    if np.isfinite(norms).any():
        lo, hi = (float(q) for q in np.nanquantile(norms, qs))
    return lo, hi, s_lo, s_hi


def circuit_faithfulness(
    model: Any,
    circuit: Circuit | Sequence[GroupLike] | str,
    clean_tokens: Int[Tensor, "n pos"] | ContrastSet,
    method: SourceLike = "mean",
    *,
    contrast_tokens: Tensor | None = None,
    answers: Tensor | None = None,
    contrast_answers: Tensor | None = None,
    metric: MetricLike = None,
    answer_position: PositionLike | None = None,
    positions: Resolver = None,
    batch_size: int = 256,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> CircuitFaithfulness:
    """Score a circuit: the metric with only the circuit intact, against the full model.

    Read ``normalised_score`` (0 = no better than ablating every component, 1 = the full
    model), not the raw ratio ``score``: embeddings and MLPs outside the circuit are ablated
    too, so a circuit whose inputs are all ablated keeps the fully ablated model's metric.

    Every component that writes into the residual stream (token and position embeddings,
    each head's output, each MLP's output) is ablated at every position except the
    (component, position) pairs of the circuit's nodes; the mean metric of that run is
    compared with the full model's (Wang et al. 2022, Sec. 4, "faithfulness"). The choice of
    ablation changes the number, so it is reported with the score.

    Ablations (``method``): ``"mean"`` (mean over the reference set at each absolute
    position; ``MeanAblation(tokens)`` picks the reference), ``"zero"``, ``"resample"`` (a
    random reference row, same absolute positions) or ``"contrast"`` (the paired contrast
    input, same absolute positions; it must be as long as the clean input).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        circuit: a :class:`~tl_inversion.circuits.Circuit`, a list of node specs, or a string
            for :meth:`Circuit.parse`. Its nodes must be components (e_tok, e_pos, aL, aL.H,
            mL); its edges are not used here.
        clean_tokens: ``[n, pos]`` clean inputs or a ``ContrastSet``.
        method: the ablation (see above).
        contrast_tokens: ``[n, pos]`` contrast inputs (method ``"contrast"``).
        answers: ``[n]`` clean answer ids (default logit-difference metric).
        contrast_answers: ``[n]`` contrast answer ids.
        metric: the metric (see :func:`tl_inversion.patching.run_patching`).
        answer_position: where the metric reads the logits.
        positions: named positions (a task, a ``ContrastSet``'s resolver or a mapping).
        batch_size: rows per forward pass.
        n_boot: bootstrap resamples for the scores' confidence intervals (0: none).
        ci: confidence level of the interval.
        seed: seed of the bootstrap.
        progress: show a progress bar.

    Returns:
        A :class:`CircuitFaithfulness` (``str()``/``repr()`` lead with the normalised score
        and list the ablated components; ``to_frame()`` is a table).

    Warns:
        DisconnectedCircuitWarning: in some rows no path runs from a kept embedding (e_tok,
            e_pos) through kept heads to the predicting position: the circuit then carries
            nothing from the input, whatever its raw score (e.g. three layer-0 heads alone,
            whose inputs are ablated embeddings).

    Raises:
        InputValueError: a node that is not a component, a contrast of another length, or
            the inputs missing for the method or metric.
    """
    if isinstance(circuit, str):
        circuit = Circuit.parse(circuit)
    elif not isinstance(circuit, Circuit):
        circuit = Circuit(tuple(circuit))
    circuit = circuit.validate(model)
    data = _prepare(
        clean_tokens,
        method,
        contrast_tokens,
        answers,
        contrast_answers,
        metric,
        answer_position,
        positions,
        False,
        None,
    )
    engine = _Engine(model, data, batch_size, progress, desc=f"faithfulness ({data.source.kind})")
    engine.check_positions([s for n in circuit.nodes for s in (n.positions or (None,))] + [data.answer_position])
    comps = _components(model)
    keep_spec: dict[tuple[str, int | None], list[PositionLike | None]] = {c: [] for c in comps}
    for node in circuit.nodes:
        for comp in _component_of(node, model):
            if comp not in keep_spec:
                raise InputValueError(f"{node.notation!r} names component {comp} that this model does not have")
            keep_spec[comp] += list(node.positions) if node.positions is not None else [None]
    keys = [(hook, head, None) for hook, head in comps]
    if isinstance(data.source, MeanAblation):
        engine.compute_means(keys)
    full_v, circ_v, abl_v = [], [], []
    order = []
    no_path = 0
    for rows in engine.batches():
        clean, src_toks = engine.crop(rows, data.clean, data.source_tokens)
        full = engine.metric(engine.run(clean), engine.ctx(rows, clean, clean, "clean"))
        values, _ = engine.source_values(rows, clean, src_toks, keys)
        b, width = clean.shape
        ar = torch.arange(b)
        circ_ops: dict[str, list[_Op]] = {}
        all_ops: dict[str, list[_Op]] = {}
        keeps: dict[tuple[str, int | None], Tensor] = {}
        for hook, head in comps:
            keep = torch.zeros(b, width, dtype=torch.bool)
            for spec in keep_spec[(hook, head)]:
                if spec is None:
                    keep[:] = True
                else:
                    keep[ar, resolve_position(clean, spec, data.positions).cpu()] = True
            keeps[(hook, head)] = keep
            val = values[(hook, head, None)]
            all_ops.setdefault(hook, []).append(_Op(head, None, val))
            if bool(keep.all()):
                continue
            circ_ops.setdefault(hook, []).append(_MaskedOp(head, keep.to(engine.device), val))
        answer_idx = (
            None
            if data.answer_position is None
            else resolve_position(clean, data.answer_position, data.positions).cpu()
        )
        no_path += int((~_reaches_output(comps, keeps, answer_idx)).sum())
        circ = engine.metric(
            engine.run(clean, [(h, _patch_hook(o)) for h, o in circ_ops.items()]),
            engine.ctx(rows, clean, clean, "patched"),
        )
        abl = engine.metric(
            engine.run(clean, [(h, _patch_hook(o)) for h, o in all_ops.items()]),
            engine.ctx(rows, clean, clean, "patched"),
        )
        if full.dim() == 0:
            full, circ, abl = full.expand(b), circ.expand(b), abl.expand(b)
        full_v.append(full)
        circ_v.append(circ)
        abl_v.append(abl)
        order.append(rows)
    idx = torch.cat(order)
    n = data.clean.shape[0]

    def arr(chunks: list[Tensor]) -> np.ndarray:
        out = torch.empty(n, dtype=torch.float64)
        out[idx] = torch.cat(chunks)
        return out.numpy()

    f, c, a = arr(full_v), arr(circ_v), arr(abl_v)
    mf, mc, ma = float(f.mean()), float(c.mean()), float(a.mean())
    lo, hi, s_lo, s_hi = _bootstrap_scores(f, c, a, n_boot, ci, seed)
    ablated = tuple(_component_name(*comp) for comp in comps if not keep_spec[comp])
    partly = tuple(
        f"{_component_name(*comp)}@{','.join(str(p) for p in keep_spec[comp])}"
        for comp in comps
        if keep_spec[comp] and None not in keep_spec[comp]
    )
    if no_path:
        warnings.warn(
            f"circuit {circuit.name!r} has no path from a kept embedding (e_tok, e_pos) through kept heads to the "
            f"output at position {data.answer_position!r} in {no_path} of {n} rows: everything it reads is ablated, "
            "so it is no better than ablating every component there (see normalised_score). Keep the embeddings "
            "(e.g. add 'e_tok; e_pos') and the heads that move their information",
            DisconnectedCircuitWarning,
            stacklevel=2,
        )
    settings = {
        **data.source.describe(),
        "alignment": "absolute position"
        if not isinstance(data.source, MeanAblation)
        else "mean at each absolute position",
        "components": "embeddings, every head output (hook_z), every MLP output",
        "n_components_ablated": sum(1 for comp in comps if not keep_spec[comp]),
        "metric": _metric_name(data.metric),
        "reference_rows": int(
            (
                getattr(data.source, "tokens", None) if getattr(data.source, "tokens", None) is not None else data.clean
            ).shape[0]
        ),
    }
    return CircuitFaithfulness(
        normalised_score=(mc - ma) / (mf - ma) if mf != ma else float("nan"),
        ci_low=lo,
        ci_high=hi,
        score=mc / mf if mf else float("nan"),
        score_ci_low=s_lo,
        score_ci_high=s_hi,
        metric_full=mf,
        metric_circuit=mc,
        metric_ablated=ma,
        n=n,
        settings=settings,
        circuit=circuit,
        ablated=ablated,
        partly_kept=partly,
        rows_without_path=no_path,
    )


class _MaskedOp(_Op):
    """Write ``value`` where ``keep`` is False (positions outside the circuit)."""

    def __init__(self, head: int | None, keep: Tensor, value: Tensor | None) -> None:
        super().__init__(head, None, value)
        self.keep = keep

    def apply(self, x: Tensor) -> None:
        target = x if self.head is None else x[:, :, self.head]
        val = torch.zeros_like(target) if self.value is None else self.value.to(target.dtype).expand_as(target)
        mask = self.keep.reshape(*self.keep.shape, *([1] * (target.dim() - 2)))
        target.copy_(torch.where(mask, target, val))


__all__ = ["CircuitFaithfulness", "circuit_faithfulness"]
