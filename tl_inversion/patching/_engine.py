"""The batching engine shared by activation patching, path patching and faithfulness.

Resolves the inputs of a call (:func:`_prepare`), splits the rows into batches (optionally
cropping trailing PAD columns), computes source values per (hook, head, position) and
builds the hook functions that write them. Everything runs in ``eval()`` and
``torch.inference_mode()`` through :func:`tl_inversion.model.activations.run_with_hooks`,
which removes exactly the hooks it added, also when a hook raises (never ``reset_hooks``).
Hooks close over their own hook name and never read ``hook.name``. Private: the public
functions are in :mod:`.activation`, :mod:`.path` and :mod:`.circuit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.errors import InputValueError
from tl_inversion.model.activations import model_device, run_with_hooks
from tl_inversion.model.checks import check_padding, check_tokens, model_special_ids
from tl_inversion.patching.metrics import LogitDiff, MetricContext, MetricLike, _eval_metric, _metric_arity
from tl_inversion.patching.notation import Node, PositionLike, Resolver, resolve_position
from tl_inversion.patching.positions import row_end_resolver
from tl_inversion.patching.sources import (
    Contrast,
    FromCache,
    MeanAblation,
    Resample,
    Source,
    SourceLike,
    ZeroAblation,
    as_source,
)
from tl_inversion.tasks.contrast_set import ContrastSet, as_generator


def _progress_enabled(progress: bool | None) -> bool:
    """Progress bars are on unless ``progress`` is ``False`` (``tqdm.auto``: notebooks too)."""
    return True if progress is None else bool(progress)


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
                raise InputValueError(
                    "Resample(answers=...) sets the contrast answers; do not pass contrast_answers= as well"
                )
            contrast_answers = torch.as_tensor(src.answers)[draw]
        elif src.tokens is None and answers is not None and contrast_answers is None:
            contrast_answers = torch.as_tensor(answers)[draw]
    elif isinstance(src, FromCache):
        src_tokens = None if src.tokens is None else src.tokens.long().cpu()
    if src_tokens is not None:
        src_tokens = src_tokens.long().cpu()
        if src_tokens.shape[0] != n:
            raise InputValueError(
                f"the source has {src_tokens.shape[0]} rows, the clean input {n}: pair them row by row"
            )
    for name, t in (("answers", answers), ("contrast_answers", contrast_answers)):
        if t is not None and torch.as_tensor(t).shape[0] != n:
            raise InputValueError(f"{name} has {torch.as_tensor(t).shape[0]} rows, clean_tokens has {n}")
    answers = None if answers is None else torch.as_tensor(answers).long().cpu()
    contrast_answers = None if contrast_answers is None else torch.as_tensor(contrast_answers).long().cpu()
    metric = LogitDiff() if metric is None else metric
    positions = row_end_resolver(positions, pad_id)
    pad_id = positions.pad_id
    if pad_id is None and trim_padding:
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
        self._check_tokens()
        self.batch_size = batch_size
        self.progress = _progress_enabled(progress)
        self.desc = desc
        self.device = model_device(model)
        self.means: dict[tuple[str, int | None, PositionLike | None], Tensor] = {}

    def _check_tokens(self) -> None:
        """Refuse, before any forward, token ids the model cannot run and left-padded rows.

        The PAD id is the call's (``pad_id=`` or the task's) where given, else the model's.
        Cache sources' tokens only place positions, so only their padding is checked.
        """
        d = self.data
        model_pad, bos = model_special_ids(self.model)
        pad = d.pad_id if d.pad_id is not None else model_pad
        runs = not isinstance(d.source, FromCache)
        for name, tokens, run in (("clean_tokens", d.clean, True), ("source tokens", d.source_tokens, runs)):
            if tokens is None:
                continue
            if run:
                check_tokens(self.model, tokens, name)
            check_padding(tokens, pad, bos_id=bos, name=name)

    # positions ------------------------------------------------------------------------
    def check_positions(self, specs: Iterable[PositionLike | None]) -> None:
        """Fail early on positions that cannot be resolved (before any forward)."""
        probe = self.data.clean[:2]
        for spec in specs:
            if spec is not None:  # negative ints count from the real end, which trimming keeps
                resolve_position(probe, spec, self.data.positions)

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

    def crop(
        self, rows: Tensor, clean: Tensor, source: Tensor | None, common: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Clean and source tokens of these rows; when trimming, trailing PAD columns are
        cropped, to one common width if ``common`` (needed to patch every position), else
        each to its own.
        """
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
        self,
        rows: Tensor,
        clean: Tensor,
        src_tokens: Tensor | None,
        keys: Sequence[tuple[str, int | None, PositionLike | None]],
    ) -> tuple[dict[Any, Tensor | None], Tensor | None]:
        """Patched values per (hook, head, position spec) for these rows; and the source
        run's logits when the source is a forward pass.
        """
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
                    raise InputValueError(
                        f"the cache has no {h!r}; it must hold the hooks of the patched nodes "
                        f"({', '.join(hooks_needed)}), e.g. run_with_cache(tokens, names_filter={hooks_needed})"
                    ) from None
                if full.shape[0] != self.data.clean.shape[0]:
                    raise InputValueError(
                        f"cache[{h!r}] has {full.shape[0]} rows, the clean input {self.data.clean.shape[0]}"
                    )
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
