"""Activation patching: the causal half of the InversionView workflow.

A reading from InversionView ("this activation encodes the count") is a hypothesis until
an intervention confirms it. Activation patching (Vig et al. 2020; Meng et al. 2022; Wang
et al. 2022; TransformerLens's ``patching.py``) runs the model on a *clean* input while
replacing the activations of some nodes (see :mod:`tl_inversion.circuits`) by other values,
and measures how much a metric moves. InversionView (Huang et al. 2024, Sec. 4 and App. on
counting) verifies its readings this way: per-head outputs (and token/position embeddings)
are patched from a *contrast* input, alone and cumulatively in forward and backward order;
the metric is the logit difference

    LD = logit[clean answer] - logit[contrast answer]      at the predicting position,

and the effect of a patch is ``mean LD_clean - mean LD_patched`` over a data set.

Sources of the patched values (``source=``):

* :class:`Contrast` (``"contrast"``): the activation of a paired contrast input. Named
  positions are resolved separately on the clean and on the contrast row, so a contrast of
  another length is matched by role (counting: ``tc``/``:`` relative to EOS);
* :class:`FromCache`: a user's ``ActivationCache`` (or ``{hook name: tensor}``) with one row
  per clean input;
* :class:`MeanAblation` (``"mean"``): the mean activation over a reference data set at the
  same (named) position;
* :class:`ZeroAblation` (``"zero"``): zeros;
* :class:`Resample` (``"resample"``): the activation of a random row of a reference set.

Everything runs in batches (bounded memory, a tqdm bar), in ``eval()`` and
``torch.inference_mode()``; hooks go through :func:`tl_inversion.run_with_hooks`,
which removes exactly the hooks it added, also when a hook raises (never ``reset_hooks``).
All node sets of one call are measured in a single pass over the data (one clean forward,
one source forward and one patched forward per distinct node set per batch).

Results are pandas DataFrames with the mean metric on clean and patched inputs, the effect,
a bootstrap confidence interval of the effect over the data set, and a normalised effect;
:func:`plot_cumulative` draws the cumulative increments. :func:`circuit_faithfulness` scores
a circuit with everything else ablated; :func:`verify_feature` turns a reading into a
test (patch from pairs that change the feature and pairs that keep it).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.model.activations import model_device, run_with_hooks
from tl_inversion.patching.notation import Circuit, GroupLike, Node, NodeGroup, PositionLike, Resolver, parse_groups, resolve_position
from tl_inversion.patching.contrasts import ContrastSet, as_generator
from tl_inversion.errors import InputValueError, PositionError, SiteError

# Metrics --------------------------------------------------------------------------------


@dataclass
class MetricContext:
    """What a metric may need besides the logits of one batch.

    Args:
        tokens: ``[batch, pos]`` the input of the run whose logits are scored (the clean
            input for clean and patched runs, the contrast input for the contrast run).
        clean_tokens: ``[batch, pos]`` the clean input of these rows.
        answers: ``[batch]`` token ids of the clean answers, or ``None``.
        contrast_answers: ``[batch]`` token ids of the contrast answers, or ``None``.
        rows: ``[batch]`` indices of these rows in the data set.
        positions: the resolver of named positions (a task or a mapping).
        answer_position: the predicting position (a name or an int).
        run: ``"clean"``, ``"contrast"`` or ``"patched"``.
    """

    tokens: Tensor
    clean_tokens: Tensor
    answers: Tensor | None
    contrast_answers: Tensor | None
    rows: Tensor
    positions: Resolver
    answer_position: PositionLike | None
    run: str

    def position(self, spec: PositionLike | None = None) -> Tensor:
        """Absolute index ``[batch]`` of a position (default: the predicting position)."""
        spec = self.answer_position if spec is None else spec
        if spec is None:
            raise InputValueError("no predicting position: pass answer_position= (a name such as ':' or an int)")
        return resolve_position(self.tokens, spec, self.positions)


class LogitDiff:
    """``logit[clean answer] - logit[contrast answer]`` at the predicting position.

    The metric of InversionView's patching experiments (Sec. 4). Returns one value per row.

    Args:
        position: the predicting position; default the call's ``answer_position``.
    """

    name = "logit_diff"

    def __init__(self, position: PositionLike | None = None) -> None:
        self.position = position

    def __call__(self, logits: Float[Tensor, "batch pos vocab"], ctx: MetricContext) -> Float[Tensor, " batch"]:
        """Per-row logit difference ``[batch]`` (logits) at the predicting position.

        Raises:
            ValueError: the call has no clean or no contrast answers.
        """
        if ctx.answers is None or ctx.contrast_answers is None:
            raise InputValueError(
                "the logit-difference metric needs answers= and contrast_answers= (token ids per row); "
                "pass them, use a contrast builder from tl_inversion.contrasts, or pass metric="
            )
        pos = ctx.position(self.position).to(logits.device)
        ar = torch.arange(logits.shape[0], device=logits.device)
        at = logits[ar, pos]
        return at[ar, ctx.answers.to(logits.device)] - at[ar, ctx.contrast_answers.to(logits.device)]

    def __repr__(self) -> str:
        return f"LogitDiff(position={self.position!r})"


class AnswerLogProb:
    """``log p(clean answer)`` at the predicting position (needs no contrast answer).

    Args:
        position: the predicting position; default the call's ``answer_position``.
    """

    name = "answer_logprob"

    def __init__(self, position: PositionLike | None = None) -> None:
        self.position = position

    def __call__(self, logits: Float[Tensor, "batch pos vocab"], ctx: MetricContext) -> Float[Tensor, " batch"]:
        """Per-row ``log p(answer)`` ``[batch]`` (nats) at the predicting position.

        Raises:
            ValueError: the call has no answers.
        """
        if ctx.answers is None:
            raise InputValueError("the answer log-prob metric needs answers= (token ids per row)")
        pos = ctx.position(self.position).to(logits.device)
        ar = torch.arange(logits.shape[0], device=logits.device)
        return logits[ar, pos].float().log_softmax(-1)[ar, ctx.answers.to(logits.device)]

    def __repr__(self) -> str:
        return f"AnswerLogProb(position={self.position!r})"


MetricLike = Union[Callable[..., Tensor], None]


def _metric_arity(metric: Callable[..., Any]) -> int:
    if isinstance(metric, (LogitDiff, AnswerLogProb)):
        return 2
    try:
        params = [
            p
            for p in inspect.signature(metric).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return 1
    return 2 if len(params) >= 2 else 1


def _metric_name(metric: Callable[..., Any]) -> str:
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


def _eval_metric(metric: Callable[..., Any], arity: int, logits: Tensor, ctx: MetricContext) -> Tensor:
    value = metric(logits, ctx) if arity == 2 else metric(logits)
    value = torch.as_tensor(value).detach().to("cpu", torch.float64)
    b = logits.shape[0]
    if value.dim() == 0:
        return value
    value = value.reshape(-1)
    if value.shape[0] != b:
        raise InputValueError(f"metric returned {value.shape[0]} values for a batch of {b}: return a scalar or one value per row")
    return value


# Sources --------------------------------------------------------------------------------


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


# The engine -----------------------------------------------------------------------------


def _progress_enabled(progress: bool | None) -> bool:
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def _recorder(store: dict[str, Tensor], name: str) -> Callable[[Tensor, Any], None]:
    def record(x: Tensor, hook: Any) -> None:  # closes over the name: never reads hook.name
        store[name] = x.detach().clone()

    return record


def _select_head(x: Tensor, head: int | None) -> Tensor:
    return x if head is None else x[:, :, head]


@dataclass
class _Op:
    """One write into a hook's value: rows ``ar`` at ``idx`` (``None`` = all), ``head``."""

    head: int | None
    idx: Tensor | None
    value: Tensor | None  # None = zeros

    def apply(self, x: Tensor) -> None:
        target_dtype = x.dtype
        if self.idx is None:
            if self.head is None:
                if self.value is None:
                    x.zero_()
                else:
                    x[...] = self.value.to(target_dtype)
            else:
                if self.value is None:
                    x[:, :, self.head] = 0
                else:
                    x[:, :, self.head] = self.value.to(target_dtype)
            return
        ar = torch.arange(x.shape[0], device=x.device)
        if self.head is None:
            x[ar, self.idx] = 0 if self.value is None else self.value.to(target_dtype)
        else:
            x[ar, self.idx, self.head] = 0 if self.value is None else self.value.to(target_dtype)


def _patch_hook(ops: list[_Op]) -> Callable[[Tensor, Any], Tensor]:
    def hook_fn(x: Tensor, hook: Any) -> Tensor:  # closes over its ops: never reads hook.name
        x = x.clone()
        for op in ops:
            op.apply(x)
        return x

    return hook_fn


def _last_non_pad(tokens: Tensor, pad_id: int) -> Tensor:
    """``[n]`` index of the last non-pad token + 1 (the width needed by each row)."""
    non_pad = tokens != pad_id
    pos = torch.arange(tokens.shape[1])
    return torch.where(non_pad, pos, torch.full_like(pos, -1)).max(-1).values + 1


@dataclass
class _Data:
    """The resolved inputs of one patching call."""

    clean: Tensor
    source: Source
    source_tokens: Tensor | None
    answers: Tensor | None
    contrast_answers: Tensor | None
    positions: Resolver
    answer_position: PositionLike | None
    metric: Callable[..., Any]
    arity: int
    pad_id: int | None
    trim: bool


def _prepare(
    clean_tokens: Tensor | ContrastSet,
    source: SourceLike,
    contrast_tokens: Tensor | None,
    answers: Tensor | None,
    contrast_answers: Tensor | None,
    metric: MetricLike,
    answer_position: PositionLike | None,
    positions: Resolver,
    trim_padding: bool,
    pad_id: int | None,
) -> _Data:
    if isinstance(clean_tokens, ContrastSet):
        cs = clean_tokens
        clean_tokens = cs.clean_tokens
        contrast_tokens = cs.contrast_tokens if contrast_tokens is None else contrast_tokens
        answers = cs.clean_answers if answers is None else answers
        contrast_answers = cs.contrast_answers if contrast_answers is None else contrast_answers
        positions = cs.positions if positions is None else positions
        answer_position = cs.answer_position if answer_position is None else answer_position
    if not torch.is_tensor(clean_tokens) or clean_tokens.dim() != 2:
        raise InputValueError("clean_tokens must be a [n, pos] tensor of token ids (or a ContrastSet)")
    clean_tokens = clean_tokens.long().cpu()
    n = clean_tokens.shape[0]
    src = as_source(source)
    src_tokens = None
    if isinstance(src, Contrast):
        src_tokens = src.tokens if src.tokens is not None else contrast_tokens
        if src_tokens is None:
            raise InputValueError("source 'contrast' needs contrast_tokens= (or a ContrastSet, or Contrast(tokens))")
    elif isinstance(src, Resample):
        ref = clean_tokens if src.tokens is None else src.tokens.long().cpu()
        g = as_generator(src.seed)
        draw = torch.randint(0, ref.shape[0], (n,), generator=g)
        src_tokens = ref[draw]
        if src.answers is not None:
            if contrast_answers is not None:
                raise InputValueError("Resample(answers=...) sets the contrast answers; do not pass contrast_answers= as well")
            contrast_answers = torch.as_tensor(src.answers)[draw]
        elif src.tokens is None and answers is not None and contrast_answers is None:
            contrast_answers = torch.as_tensor(answers)[draw]
    elif isinstance(src, FromCache):
        src_tokens = None if src.tokens is None else src.tokens.long().cpu()
    if src_tokens is not None:
        src_tokens = src_tokens.long().cpu()
        if src_tokens.shape[0] != n:
            raise InputValueError(f"the source has {src_tokens.shape[0]} rows, the clean input {n}: pair them row by row")
    for name, t in (("answers", answers), ("contrast_answers", contrast_answers)):
        if t is not None and torch.as_tensor(t).shape[0] != n:
            raise InputValueError(f"{name} has {torch.as_tensor(t).shape[0]} rows, clean_tokens has {n}")
    answers = None if answers is None else torch.as_tensor(answers).long().cpu()
    contrast_answers = None if contrast_answers is None else torch.as_tensor(contrast_answers).long().cpu()
    metric = LogitDiff() if metric is None else metric
    if pad_id is None and trim_padding:
        pad_id = getattr(positions, "pad_id", None)
        if pad_id is None:
            raise InputValueError("trim_padding needs pad_id= (or a task as positions=, which knows its PAD id)")
    return _Data(
        clean_tokens, src, src_tokens, answers, contrast_answers, positions, answer_position, metric,
        _metric_arity(metric), pad_id, trim_padding,
    )


class _Engine:
    """Batches, sources and metrics shared by the patching functions."""

    def __init__(self, model: Any, data: _Data, batch_size: int, progress: bool | None, desc: str) -> None:
        if batch_size < 1:
            raise InputValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.progress = _progress_enabled(progress)
        self.desc = desc
        self.device = model_device(model)
        self.means: dict[tuple[str, int | None, PositionLike | None], Tensor] = {}

    # positions ------------------------------------------------------------------------
    def check_positions(self, specs: Iterable[PositionLike | None]) -> None:
        """Fail early on positions that cannot be resolved (before any forward)."""
        probe = self.data.clean[:2]
        for spec in specs:
            if spec is not None:
                resolve_position(probe, spec, self.data.positions)
            if self.data.trim and isinstance(spec, int) and spec < 0:
                raise InputValueError(
                    f"position {spec} counts from the end of the row, which trim_padding changes; "
                    "use a named or a non-negative position"
                )

    def batches(self) -> Iterable[Tensor]:
        """Row indices of each batch (sorted by needed width when trimming)."""
        n = self.data.clean.shape[0]
        if self.data.trim:
            # batch rows of similar width together (the clean width decides most of the cost)
            order = torch.argsort(_last_non_pad(self.data.clean, self.data.pad_id), stable=True)
        else:
            order = torch.arange(n)
        chunks = list(torch.split(order, self.batch_size))
        return tqdm(chunks, desc=self.desc, leave=False, disable=not self.progress)

    def crop(self, rows: Tensor, clean: Tensor, source: Tensor | None, common: bool = True) -> tuple[Tensor, Tensor | None]:
        """Clean and source tokens of these rows; when trimming, trailing PAD columns are
        cropped, to one common width if ``common`` (needed to patch every position), else
        each to its own."""
        c = clean[rows]
        s = None if source is None else source[rows]
        if not self.data.trim:
            return c, s
        wc = max(1, int(_last_non_pad(c, self.data.pad_id).max()))
        ws = None if s is None else max(1, int(_last_non_pad(s, self.data.pad_id).max()))
        if s is None:
            return c[:, :wc], None
        if common and c.shape[1] == s.shape[1]:
            w = max(wc, ws)
            return c[:, :w], s[:, :w]
        return c[:, :wc], s[:, :ws]

    def ctx(self, rows: Tensor, tokens: Tensor, clean: Tensor, run: str) -> MetricContext:
        d = self.data
        return MetricContext(
            tokens=tokens,
            clean_tokens=clean,
            answers=None if d.answers is None else d.answers[rows],
            contrast_answers=None if d.contrast_answers is None else d.contrast_answers[rows],
            rows=rows,
            positions=d.positions,
            answer_position=d.answer_position,
            run=run,
        )

    def run(self, tokens: Tensor, hooks: Sequence[tuple[str, Callable]] = ()) -> Tensor:
        return run_with_hooks(self.model, tokens, list(hooks), return_type="logits")

    def metric(self, logits: Tensor, ctx: MetricContext) -> Tensor:
        return _eval_metric(self.data.metric, self.data.arity, logits, ctx)

    # sources ----------------------------------------------------------------------------
    def compute_means(self, keys: Iterable[tuple[str, int | None, PositionLike | None]]) -> None:
        """Mean activation per (hook, head, position spec) over the reference set."""
        keys = list(dict.fromkeys(keys))
        src = self.data.source
        ref = self.data.clean if getattr(src, "tokens", None) is None else src.tokens.long().cpu()
        hooks_needed = sorted({k[0] for k in keys})
        sums: dict[Any, Tensor] = {}
        counts: dict[Any, int] = {}
        chunks = torch.split(torch.arange(ref.shape[0]), self.batch_size)
        for rows in tqdm(chunks, desc="mean activations", leave=False, disable=not self.progress):
            toks = ref[rows]
            store: dict[str, Tensor] = {}
            run_with_hooks(self.model, toks, [(h, _recorder(store, h)) for h in hooks_needed], return_type=None)
            for key in keys:
                hook, head, spec = key
                act = _select_head(store[hook], head).double()
                if spec is None:
                    val = act.sum(0)
                else:
                    idx = resolve_position(toks, spec, self.data.positions).to(act.device)
                    val = act[torch.arange(act.shape[0], device=act.device), idx].sum(0)
                sums[key] = sums.get(key, 0) + val
                counts[key] = counts.get(key, 0) + act.shape[0]
        self.means = {k: (sums[k] / counts[k]).float() for k in keys}

    def source_values(
        self, rows: Tensor, clean: Tensor, src_tokens: Tensor | None, keys: Sequence[tuple[str, int | None, PositionLike | None]]
    ) -> tuple[dict[Any, Tensor | None], Tensor | None]:
        """Patched values per (hook, head, position spec) for these rows; and the source
        run's logits when the source is a forward pass."""
        src = self.data.source
        out: dict[Any, Tensor | None] = {}
        logits = None
        if isinstance(src, ZeroAblation):
            return {k: None for k in keys}, None
        if isinstance(src, MeanAblation):
            b = rows.shape[0]
            for k in keys:
                m = self.means[k]
                if k[2] is None:
                    m = m[: clean.shape[1]]
                out[k] = m.to(self.device).unsqueeze(0).expand(b, *m.shape)
            return out, None
        hooks_needed = sorted({k[0] for k in keys})
        if isinstance(src, FromCache):
            store = {}
            for h in hooks_needed:
                try:
                    full = src.cache[h]
                except KeyError:
                    raise KeyError(
                        f"the cache has no {h!r}; it must hold the hooks of the patched nodes "
                        f"({', '.join(hooks_needed)}), e.g. run_with_cache(tokens, names_filter={hooks_needed})"
                    ) from None
                if full.shape[0] != self.data.clean.shape[0]:
                    raise InputValueError(f"cache[{h!r}] has {full.shape[0]} rows, the clean input {self.data.clean.shape[0]}")
                store[h] = full[rows.to(full.device)].to(self.device)
                if self.data.trim and src_tokens is None:
                    store[h] = store[h][:, : clean.shape[1]]
            pos_tokens = clean if src_tokens is None else src_tokens
        else:
            store = {}
            logits = self.run(src_tokens, [(h, _recorder(store, h)) for h in hooks_needed])
            pos_tokens = src_tokens
        for k in keys:
            hook, head, spec = k
            act = _select_head(store[hook], head)
            if spec is None:
                if act.shape[1] != clean.shape[1]:
                    raise InputValueError(
                        f"patching {hook} at every position needs source inputs as long as the clean ones "
                        f"({act.shape[1]} vs {clean.shape[1]} positions); name the positions instead"
                    )
                out[k] = act
            else:
                idx = resolve_position(pos_tokens, spec, self.data.positions).to(act.device)
                out[k] = act[torch.arange(act.shape[0], device=act.device), idx]
        return out, logits


def _node_keys(nodes: Iterable[Node]) -> list[tuple[str, int | None, PositionLike | None]]:
    keys = []
    for node in nodes:
        for spec in node.positions if node.positions is not None else (None,):
            keys.append((node.hook, node.head, spec))
    return list(dict.fromkeys(keys))


def _patch_ops(
    nodes: Iterable[Node],
    clean: Tensor,
    values: Mapping[Any, Tensor | None],
    positions: Resolver,
    device: torch.device,
    idx_cache: dict[PositionLike, Tensor],
) -> dict[str, list[_Op]]:
    ops: dict[str, list[_Op]] = {}
    for node in nodes:
        for spec in node.positions if node.positions is not None else (None,):
            if spec is None:
                idx = None
            else:
                if spec not in idx_cache:
                    idx_cache[spec] = resolve_position(clean, spec, positions).to(device)
                idx = idx_cache[spec]
            ops.setdefault(node.hook, []).append(_Op(node.head, idx, values[(node.hook, node.head, spec)]))
    return ops


# Results --------------------------------------------------------------------------------


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(x * w) / np.sum(w)) if len(x) else float("nan")


def bootstrap_ci(
    values: np.ndarray, weights: np.ndarray | None = None, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a (weighted) mean.

    Args:
        values: ``[n]`` per-unit values (per example, or per batch for scalar metrics).
        weights: ``[n]`` unit weights (``None`` = 1 each).
        n_boot: resamples (0 disables: returns NaNs).
        ci: coverage, e.g. 0.95.
        seed: numpy seed.

    Returns:
        ``(low, high)``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n_boot <= 0 or n < 2:
        return float("nan"), float("nan")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, int(2e7 // n)))
    means = []
    xw = values * w
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)
        means.append(xw[idx].sum(1) / w[idx].sum(1))
    means = np.concatenate(means)
    alpha = (1 - ci) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class PatchingResult:
    """Raw per-example metrics of one patching pass; build tables from it.

    Args:
        groups: ``{label: NodeGroup}`` of the patched node sets.
        clean: ``[units]`` metric on the clean inputs.
        patched: ``{label: [units]}`` metric with that group patched.
        contrast: ``[units]`` metric on the contrast inputs (a forward source), else ``None``.
        weights: ``[units]`` rows per unit (1 per example; the batch size for a metric that
            returns a scalar per batch).
        settings: source, metric, counts and other settings of the pass.
        descriptions: ``{label: text}`` for the ``nodes`` column (default: the notation).
    """

    groups: dict[str, NodeGroup]
    clean: np.ndarray
    patched: dict[str, np.ndarray]
    contrast: np.ndarray | None
    weights: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def effect_values(self, label: str) -> np.ndarray:
        """Per-unit effect ``clean - patched`` of one group."""
        return self.clean - self.patched[label]

    def row(self, label: str, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """One table row (see :meth:`table`)."""
        w = self.weights
        ld_clean = _weighted_mean(self.clean, w)
        ld_patched = _weighted_mean(self.patched[label], w)
        effect = ld_clean - ld_patched
        low, high = bootstrap_ci(self.effect_values(label), w, n_boot=n_boot, ci=ci, seed=seed)
        if self.contrast is not None:
            ld_contrast = _weighted_mean(self.contrast, w)
            denom, by = ld_clean - ld_contrast, "clean-contrast"
        else:
            ld_contrast, denom, by = float("nan"), ld_clean, "clean"
        return {
            "group": label,
            "nodes": self.descriptions.get(label) or " + ".join(n.notation for n in self.groups[label].nodes),
            "n": int(w.sum()),
            "LD_clean": ld_clean,
            "LD_patched": ld_patched,
            "effect": effect,
            "ci_low": low,
            "ci_high": high,
            "normalised": effect / denom if denom else float("nan"),
            "LD_contrast": ld_contrast,
            "normalised_by": by,
        }

    def table(
        self, labels: Sequence[str] | None = None, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
    ) -> pd.DataFrame:
        """DataFrame indexed by group label.

        Columns: ``nodes`` (notation), ``n`` (rows), ``LD_clean`` and ``LD_patched`` (mean
        metric; the logit difference by default, in logits), ``effect`` (``LD_clean -
        LD_patched``), ``ci_low``/``ci_high`` (bootstrap CI of the effect over the data set),
        ``normalised`` (effect / (LD_clean - LD_contrast) for forward sources: 1 = as much as
        running the contrast input; effect / LD_clean otherwise, as said by ``normalised_by``),
        ``LD_contrast``. ``df.attrs`` holds the settings.
        """
        labels = list(self.patched) if labels is None else list(labels)
        df = pd.DataFrame([self.row(lab, n_boot=n_boot, ci=ci, seed=seed) for lab in labels]).set_index("group")
        df.attrs.update(self.settings)
        return df


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
    contrast_tokens: Int[Tensor, "n pos_c"] | None = None,
    answers: Int[Tensor, " n"] | None = None,
    contrast_answers: Int[Tensor, " n"] | None = None,
    metric: MetricLike = None,
    answer_position: PositionLike | None = None,
    positions: Resolver = None,
    batch_size: int = 256,
    trim_padding: bool = False,
    pad_id: int | None = None,
    progress: bool | None = None,
) -> PatchingResult:
    """Patch each node group (separately) and keep the per-example metrics.

    All groups are measured in one pass over the data; identical node sets run once.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (put in eval mode for the call).
        groups: node groups: a mapping ``{label: group}``, a sequence of groups, or one
            group; a group is short notation (``"a1@:"``, ``"a0@tc + e_tok@tc"``), a
            :class:`~tl_inversion.circuits.Node`, a :class:`~tl_inversion.circuits.NodeGroup`
            or a tuple of nodes.
        clean_tokens: ``[n, pos]`` token ids of the clean inputs, or a
            :class:`~tl_inversion.contrasts.ContrastSet` (which supplies the contrast tokens,
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
            or ``{name: fn(tokens) -> [n]}``).
        batch_size: rows per forward (256 suits small models on CPU, where cache locality
            matters; raise it on a GPU).
        trim_padding: crop trailing PAD columns per batch and batch rows of similar width
            (exact for causal models; faster on padded data). Needs a PAD id (``pad_id`` or
            the task's) and forbids negative integer positions.
        pad_id: PAD token id for ``trim_padding``.
        progress: show a tqdm bar (default: when stderr is a terminal).

    Returns:
        A :class:`PatchingResult`; ``.table()`` gives the DataFrame.

    Raises:
        SiteError: a node's hook or head does not fit the model.
        PositionError: a position cannot be resolved (unknown name, out of range).
        ValueError: missing inputs for the chosen source or metric, mismatched row counts.
    """
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
        weights.append(torch.ones(rows.shape[0], dtype=torch.float64) if per_example else torch.tensor([float(rows.shape[0])]))

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
        groups: the node groups (e.g. ``["a1@:", "a0@:", "a0@tc + e_tok@tc"]``).
        clean_tokens: ``[n, pos]`` clean inputs or a ``ContrastSet``.
        source: where patched values come from (``"contrast"`` by default).
        n_boot: bootstrap resamples for the CI of the effect.
        ci: CI coverage.
        seed: bootstrap seed.

    Returns:
        DataFrame indexed by group label with ``LD_clean``, ``LD_patched``, ``effect``,
        ``ci_low``, ``ci_high``, ``normalised`` (see :meth:`PatchingResult.table`).

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
        n_boot, ci, seed: bootstrap settings.
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
        alone += parse_groups(extra) if not isinstance(extra, Mapping) else [NodeGroup.parse(v, label=str(k)) for k, v in extra.items()]
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
        rows.append({"direction": d, "step": step, "added": added, **r, "increment": inc, "inc_ci_low": lo, "inc_ci_high": hi})
        prev[d] = key
    df = pd.DataFrame(rows)
    cols = ["direction", "step", "added", "nodes", "n", "LD_clean", "LD_patched", "effect", "ci_low", "ci_high",
            "increment", "inc_ci_low", "inc_ci_high", "normalised", "LD_contrast", "normalised_by"]
    df = df[cols]
    df.attrs.update(res.settings)
    return df


def plot_cumulative(df: pd.DataFrame, *, title: str | None = None, figsize: tuple[float, float] | None = None):
    """Waterfall plot of a :func:`cumulative_patching` table: one panel per direction.

    Each bar spans from the previous cumulative effect to the new one (its height is the
    increment of the group added at that step, labelled below); the error bar is the
    bootstrap CI of the cumulative effect; the dashed line is the last cumulative effect.

    Args:
        df: the table (columns ``direction``, ``step``, ``added``, ``effect``, ``increment``,
            optional ``ci_low``/``ci_high``).
        title: figure title.
        figsize: matplotlib figure size in inches.

    Returns:
        A ``matplotlib.figure.Figure`` (made without pyplot, so no backend is touched).

    Raises:
        ValueError: the table lacks the needed columns.
    """
    from matplotlib.figure import Figure

    need = {"direction", "step", "added", "effect", "increment"}
    if not need <= set(df.columns):
        raise InputValueError(f"plot_cumulative needs a cumulative_patching table with columns {sorted(need)}")
    dirs = [d for d in ("forward", "backward") if d in set(df["direction"])] or list(dict.fromkeys(df["direction"]))
    fig = Figure(figsize=figsize or (5.0 * len(dirs), 4.0), layout="constrained")
    axes = fig.subplots(1, len(dirs), squeeze=False)[0]
    for ax, d in zip(axes, dirs):
        sub = df[df["direction"] == d].sort_values("step")
        x = np.arange(len(sub))
        tops = sub["effect"].to_numpy(dtype=float)
        bottoms = tops - sub["increment"].to_numpy(dtype=float)
        colors = ["tab:blue" if inc >= 0 else "tab:red" for inc in sub["increment"]]
        ax.bar(x, tops - bottoms, bottom=bottoms, color=colors, width=0.6)
        if {"ci_low", "ci_high"} <= set(sub.columns):
            lo = sub["ci_low"].to_numpy(dtype=float)
            hi = sub["ci_high"].to_numpy(dtype=float)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.errorbar(x[ok], tops[ok], yerr=[tops[ok] - lo[ok], hi[ok] - tops[ok]], fmt="none", ecolor="black", capsize=3)
        for xi, top, inc in zip(x, tops, sub["increment"]):
            ax.annotate(f"{top:.2f}\n(+{inc:.2f})" if inc >= 0 else f"{top:.2f}\n({inc:.2f})", (xi, top),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.axhline(tops[-1], ls="--", color="gray", lw=0.8)
        ax.axhline(0, color="black", lw=0.6)
        lo_y, hi_y = min(0.0, float(np.nanmin(bottoms)), float(np.nanmin(tops))), max(0.0, float(np.nanmax(tops)))
        span = (hi_y - lo_y) or 1.0
        ax.set_ylim(lo_y - 0.05 * span * (lo_y < 0), hi_y + 0.18 * span)  # room for the labels
        ax.set_xticks(x, [f"+ {a}" if i else str(a) for i, a in enumerate(sub["added"])], rotation=30, ha="right")
        ax.set_title(d)
        ax.set_ylabel("cumulative effect (LD_clean - LD_patched)")
    if title:
        fig.suptitle(title)
    return fig


# Circuit faithfulness ---------------------------------------------------------------------


@dataclass
class FaithfulnessResult:
    """The metric with only a circuit intact, against the full model.

    Args:
        score: ``metric_circuit / metric_full`` (1 = the circuit alone recovers the full
            model's mean metric).
        normalised_score: ``(metric_circuit - metric_ablated) / (metric_full - metric_ablated)``
            (0 = no better than ablating everything, 1 = as the full model).
        metric_full, metric_circuit, metric_ablated: mean metric of the full model, of the
            model with everything outside the circuit ablated, and with every component
            ablated.
        ci_low, ci_high: bootstrap CI of ``score``.
        n: rows.
        settings: the ablation settings (method, reference, alignment, components ablated,
            metric); the number depends on them.
        circuit: the circuit scored.
    """

    score: float
    normalised_score: float
    metric_full: float
    metric_circuit: float
    metric_ablated: float
    ci_low: float
    ci_high: float
    n: int
    settings: dict[str, Any]
    circuit: Circuit

    def __str__(self) -> str:
        return (
            f"faithfulness of {self.circuit.name!r} = {self.score:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}] "
            f"(normalised {self.normalised_score:.4f}; full {self.metric_full:.4f}, circuit {self.metric_circuit:.4f}, "
            f"all ablated {self.metric_ablated:.4f}; ablation={self.settings.get('source')}, n={self.n})"
        )

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame with the score, the metrics and the ablation settings."""
        row = {
            "circuit": self.circuit.name, "score": self.score, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "normalised_score": self.normalised_score, "metric_full": self.metric_full,
            "metric_circuit": self.metric_circuit, "metric_ablated": self.metric_ablated, "n": self.n,
        }
        row.update({f"ablation_{k}": (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in self.settings.items()})
        return pd.DataFrame([row]).set_index("circuit")


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
    progress: bool | None = None,
) -> FaithfulnessResult:
    """Score a circuit: the metric with only the circuit intact, against the full model.

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
        contrast_tokens, answers, contrast_answers, metric, answer_position, positions,
        batch_size, progress: as in :func:`run_patching`.
        n_boot, ci, seed: bootstrap of the score's CI.

    Returns:
        A :class:`FaithfulnessResult` (``str()`` is one line; ``to_frame()`` a table).

    Raises:
        ValueError: a node that is not a component, a contrast of another length, or the
            inputs missing for the method or metric.
    """
    if isinstance(circuit, str):
        circuit = Circuit.parse(circuit)
    elif not isinstance(circuit, Circuit):
        circuit = Circuit(tuple(circuit))
    circuit = circuit.validate(model)
    data = _prepare(clean_tokens, method, contrast_tokens, answers, contrast_answers, metric, answer_position, positions, False, None)
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
    for rows in engine.batches():
        clean, src_toks = engine.crop(rows, data.clean, data.source_tokens)
        full = engine.metric(engine.run(clean), engine.ctx(rows, clean, clean, "clean"))
        values, _ = engine.source_values(rows, clean, src_toks, keys)
        b, width = clean.shape
        ar = torch.arange(b)
        circ_ops: dict[str, list[_Op]] = {}
        all_ops: dict[str, list[_Op]] = {}
        for hook, head in comps:
            keep = torch.zeros(b, width, dtype=torch.bool)
            for spec in keep_spec[(hook, head)]:
                if spec is None:
                    keep[:] = True
                else:
                    keep[ar, resolve_position(clean, spec, data.positions)] = True
            val = values[(hook, head, None)]
            all_ops.setdefault(hook, []).append(_Op(head, None, val))
            if bool(keep.all()):
                continue
            circ_ops.setdefault(hook, []).append(_MaskedOp(head, keep.to(engine.device), val))
        circ = engine.metric(engine.run(clean, [(h, _patch_hook(o)) for h, o in circ_ops.items()]), engine.ctx(rows, clean, clean, "patched"))
        abl = engine.metric(engine.run(clean, [(h, _patch_hook(o)) for h, o in all_ops.items()]), engine.ctx(rows, clean, clean, "patched"))
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
    lo = hi = float("nan")
    if n_boot > 0 and n > 1:
        rng = np.random.default_rng(seed)
        ratios = []
        for _ in range(n_boot):
            i = rng.integers(0, n, n)
            ratios.append(c[i].mean() / f[i].mean())
        lo, hi = (float(q) for q in np.quantile(ratios, [(1 - ci) / 2, 1 - (1 - ci) / 2]))
    settings = {
        **data.source.describe(),
        "alignment": "absolute position" if not isinstance(data.source, MeanAblation) else "mean at each absolute position",
        "components": "embeddings, every head output (hook_z), every MLP output",
        "n_components_ablated": sum(1 for comp in comps if not keep_spec[comp]),
        "metric": _metric_name(data.metric),
        "reference_rows": int((getattr(data.source, "tokens", None) if getattr(data.source, "tokens", None) is not None else data.clean).shape[0]),
    }
    return FaithfulnessResult(
        score=mc / mf if mf else float("nan"),
        normalised_score=(mc - ma) / (mf - ma) if mf != ma else float("nan"),
        metric_full=mf,
        metric_circuit=mc,
        metric_ablated=ma,
        ci_low=lo,
        ci_high=hi,
        n=n,
        settings=settings,
        circuit=circuit,
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


# From reading to verifying ----------------------------------------------------------------


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
    answers: Int[Tensor, " n"] | Callable[[Tensor], Tensor],
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
        answers: ``[n]`` clean answer ids, or ``fn(tokens) -> [n]`` (applied to the clean
            inputs only).
        answer_position: the predicting position.
        positions: resolver of named positions (e.g. the task).
        pool: where contrasts come from (default ``tokens``).
        same: a key the contrast must share with the clean input (e.g. length).
        metric: default :class:`AnswerLogProb` (log p of the clean answer; needs no contrast
            answer, which "keeps g" pairs would not have).
        generator: seed of the pairing.
        feature_name: label of g in the table.
        n_boot, ci, seed: bootstrap settings.
        **kwargs: passed to :func:`run_patching` (``batch_size``, ``trim_padding``, ...).

    Returns:
        DataFrame indexed by ``"changes g"`` and ``"keeps g"`` with ``feature``, ``nodes``,
        ``n``, ``LD_clean`` and ``LD_patched`` (the mean metric, by default log p of the clean
        answer, in nats), ``effect``, ``ci_low``/``ci_high``, ``n_unpaired`` (rows without a
        partner); ``df.attrs["ratio"]`` = effect(changes) / effect(keeps).

    Raises:
        ValueError: no pair could be formed for either kind.
    """
    group = NodeGroup.parse(node)
    change, keep = feature_pairs(tokens, feature, pool=pool, same=same, generator=generator)
    pool_t = tokens if pool is None else pool
    ans = answers(tokens) if callable(answers) else torch.as_tensor(answers)
    rows_out = {}
    settings = {}
    for label, idx in (("changes g", change), ("keeps g", keep)):
        ok = idx >= 0
        if not bool(ok.any()):
            raise InputValueError(f"no contrast pair {label!r} could be formed: every row has {'a single' if label == 'changes g' else 'a unique'} feature value")
        res = run_patching(
            model, {group.name: group}, tokens[ok], Contrast(pool_t[idx[ok]]),
            answers=ans[ok], metric=metric if metric is not None else AnswerLogProb(),
            answer_position=answer_position, positions=positions, **kwargs,
        )
        row = res.row(group.name, n_boot=n_boot, ci=ci, seed=seed)
        for k in ("group", "normalised", "LD_contrast", "normalised_by"):  # no contrast answer here
            row.pop(k)
        row["n_unpaired"] = int((~ok).sum())
        rows_out[label] = row
        settings = res.settings
    df = pd.DataFrame.from_dict(rows_out, orient="index")
    df.insert(0, "feature", feature_name or getattr(feature, "__name__", "g"))
    df.attrs.update(settings)
    e_change, e_keep = df.loc["changes g", "effect"], df.loc["keeps g", "effect"]
    df.attrs["ratio"] = float(e_change / e_keep) if e_keep else float("inf")
    return df
