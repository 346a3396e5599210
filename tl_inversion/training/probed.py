"""This project's recipe for training a small probed model on a task.

The model is a Hugging Face ``GPT2LMHeadModel`` (so the result is in the same format as
the paper's released checkpoints and loads through :mod:`tl_inversion.loading` into a
``HookedTransformer`` or a ``TransformerBridge``). As in the paper's task code, the loss is
next-token cross-entropy on the answer tokens only (the task's ``answer_mask``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.devices import resolve_device
from tl_inversion.errors import InputValueError
from tl_inversion.io import atomic_write_dir, atomic_write_json, plain_number
from tl_inversion.tasks.base import CharTask
from tl_inversion.training.config import init_accepts_any
from tl_inversion.training.schedule import lr_factor

_INTS = ("n_layers", "d_model", "n_heads", "steps", "batch_size", "warmup_steps", "seed")
_FLOATS = ("lr", "weight_decay")


@init_accepts_any(*_INTS, *_FLOATS, "d_mlp")  # __post_init__ converts them
@dataclass
class ProbedConfig:
    """Shape and optimisation of a probed model.

    Raises:
        ValueError: a size or step count below 1, ``d_model`` not a multiple of ``n_heads``,
            a negative warm-up or a non-positive learning rate.
        TypeError: a field that is not a number (NumPy / torch scalars are accepted).

    Args:
        n_layers, d_model, n_heads, d_mlp: GPT-2 shape (``d_mlp`` None: 4 * d_model).
        steps, batch_size, lr, weight_decay, warmup_steps: AdamW with linear warm-up then
            cosine decay to 10%.
        seed: initialisation and data order.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 1
    d_mlp: int | None = None
    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        # NumPy / torch scalars become plain numbers (the recipe is written as JSON)
        for name in _INTS:
            setattr(self, name, plain_number(name, getattr(self, name), int))
        if self.d_mlp is not None:
            self.d_mlp = plain_number("d_mlp", self.d_mlp, int)
        for name in _FLOATS:
            setattr(self, name, plain_number(name, getattr(self, name), float))
        for name in ("n_layers", "d_model", "n_heads", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InputValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise InputValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.d_mlp is not None and self.d_mlp < 1:
            raise InputValueError(f"d_mlp must be >= 1 (None: 4 * d_model), got {self.d_mlp}")
        if self.warmup_steps < 0:
            raise InputValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputValueError(f"lr must be a positive, finite learning rate, got {self.lr}")


def answer_accuracy(
    logits_fn: Callable[[Tensor], Tensor],
    tokens: Int[Tensor, "n n_ctx"],
    answer_mask: Bool[Tensor, "n n_ctx"],
    batch: int = 8192,
) -> float:
    """Exact-match accuracy: every answer token predicted by argmax (teacher forcing)."""
    correct = 0
    for i in range(0, tokens.shape[0], batch):
        x, m = tokens[i : i + batch], answer_mask[i : i + batch]
        pred = logits_fn(x).argmax(-1)[:, :-1].cpu()
        ok = (pred == x[:, 1:]) | ~m[:, 1:]
        correct += int(ok.all(-1).sum())
    return correct / tokens.shape[0]


def greedy_accuracy(
    logits_fn: Callable[[Tensor], Tensor],
    tokens: Int[Tensor, "n n_ctx"],
    answer_start: int,
    eos_id: int,
    pad_id: int,
    batch: int = 8192,
) -> float:
    """Exact-match accuracy by greedy generation through EOS (the paper's test of its addition
    model, InversionView App. D): from the prompt ``tokens[:, :answer_start]``, append the
    argmax token until EOS (or the row's end), PAD after EOS; a row counts when everything
    generated from ``answer_start`` on equals the row itself (answer digits, EOS, padding).

    Args:
        logits_fn: ``[b, t]`` token ids -> ``[b, t, d_vocab]`` logits (e.g. the probed model).
        tokens: ``[n, n_ctx]`` rows ``[BOS] prompt answer [EOS] PAD...``.
        answer_start: index of the first answer token (addition: the index after ``=``).
        eos_id: the task's EOS id.
        pad_id: the task's PAD id.
        batch: rows per forward.

    Returns:
        The fraction of rows generated exactly (0..1).

    Raises:
        InputValueError: ``answer_start`` outside ``1 .. n_ctx - 1`` or no rows.
    """
    n, n_ctx = tokens.shape
    if n == 0 or not 1 <= answer_start < n_ctx:
        raise InputValueError(f"need rows and 1 <= answer_start < n_ctx ({n_ctx}), got {n} rows, {answer_start}")
    correct = 0
    for i in range(0, n, batch):
        rows = tokens[i : i + batch]
        x = rows.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool)
        for pos in range(answer_start, n_ctx):
            pred = logits_fn(x[:, :pos])[:, -1].argmax(-1).cpu()
            x[:, pos] = torch.where(done, torch.full_like(pred, pad_id), pred)
            done |= pred == eos_id
        correct += int((x[:, answer_start:] == rows[:, answer_start:]).all(-1).sum())
    return correct / n


def train_probed_model(
    task: CharTask,
    train_data: Int[Tensor, "n n_ctx"],
    test_data: Int[Tensor, "m n_ctx"],
    answer_mask: Callable[[Tensor], Tensor],
    cfg: ProbedConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a GPT-2-shaped probed model and save it as a Hugging Face checkpoint.

    Args:
        task: vocabulary and special tokens.
        train_data: training token ids ``[n, n_ctx]``.
        test_data: held-out token ids ``[m, n_ctx]`` (the reported accuracy).
        answer_mask: ``fn(tokens) -> bool [n, n_ctx]``, True at the answer tokens (targets).
        cfg: the recipe.
        out_dir: folder that receives ``config.json``, ``model.safetensors`` and
            ``recipe.json`` (config, accuracy, time), written atomically.
        progress: show a progress bar.

    Returns:
        ``{"test_accuracy": exact match on test_data, "seconds": ..., ...}``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    hf_cfg = GPT2Config(
        vocab_size=task.d_vocab,
        n_positions=task.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        bos_token_id=task.bos_id,
        eos_token_id=task.eos_id,
        pad_token_id=task.pad_id,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, "cosine"))
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model.train()
    # the whole split lives on the device: one gather per step, no host-side work
    data = train_data.to(device)
    labels_all = torch.where(answer_mask(train_data), train_data, torch.full_like(train_data, -100)).to(device)
    for _ in tqdm(range(cfg.steps), disable=not progress, desc="train probed model"):
        idx = torch.randint(train_data.shape[0], (cfg.batch_size,), generator=g).to(device)
        loss = model(input_ids=data[idx], labels=labels_all[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = answer_accuracy(lambda x: model(input_ids=x.to(device)).logits, test_data, answer_mask(test_data))
    seconds = time.perf_counter() - t0
    info = {"task": task.name, "recipe": asdict(cfg), "test_accuracy": acc, "seconds": seconds, "device": str(device)}

    def fill(tmp: Path) -> None:
        model.cpu().save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(tmp / "recipe.json", info)

    atomic_write_dir(out_dir, fill)
    return info
