"""Setting up a training run: data checks, the new bank, resuming, the log and held-out inputs.

Split from :mod:`.trainer` (which runs the steps); every function here runs once per call
of :func:`~tl_inversion.training.trainer.train`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.errors import InputTypeError, InputValueError, OutputExistsError
from tl_inversion.io import atomic_write_json
from tl_inversion.model import fingerprints
from tl_inversion.model.activations import check_tokens, harvest
from tl_inversion.model.sites import Site
from tl_inversion.tasks.base import sample_positions
from tl_inversion.tasks.protocol import Task
from tl_inversion.training.checkpoint import RunState, latest_checkpoint
from tl_inversion.training.config import TrainConfig


def _as_token_ids(task: Task, data: Any, name: str) -> Tensor:
    """``data`` as ``[n, n_ctx]`` token ids: a tensor as is, a list of texts encoded by the task."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        return task.encode(list(data))
    raise InputTypeError(
        f"{name} must be an integer tensor [n, n_ctx] of token ids or a list of texts (encoded with the task), "
        f"got {type(data).__name__}"
    )


def _check_data(model: Any, task: Task, train_data: Tensor, eval_data: Tensor) -> None:
    for name, data in (("train_data", train_data), ("eval_data", eval_data)):
        check_tokens(model, data, name)
        if data.shape[-1] != task.n_ctx:
            raise InputValueError(f"{name} must be [n, {task.n_ctx}] token ids of task {task.name!r}, "
                                  f"got {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise InputValueError("train_data and eval_data need at least one input each")
    if task.n_ctx > int(model.cfg.n_ctx):
        raise InputValueError(f"task inputs have {task.n_ctx} positions but the model's context is {model.cfg.n_ctx}")
    if task.d_vocab != int(model.cfg.d_vocab):
        warnings.warn(
            f"task {task.name!r} has {task.d_vocab} tokens but the model's vocabulary has {int(model.cfg.d_vocab)}: "
            "is this the model that was trained on this task? (Tokenizer tasks on models with a padded "
            "vocabulary differ legitimately.)",
            stacklevel=3,
        )


def _new_bank(model: Any, task: Task, sites: list[Site], cfg: TrainConfig, probe: Tensor) -> DecoderBank:
    """A freshly initialised bank for ``sites`` with the run's record in ``meta`` and each
    site embedding initialised from the activations of ``probe`` at trainable positions.
    """
    first_acts = harvest(model, probe, sites, validate=False)
    widths = {str(s): int(a.shape[-1]) for s, a in first_acts.items()}
    meta = {
        "fingerprint": fingerprints.fingerprint(model),
        "probe": fingerprints.probe_signature(model, sites),
        "task": {"name": task.name, "vocab": getattr(task, "chars", None) or list(task.vocab),
                 "vocab_sha256": task.vocab_hash(), "n_ctx": task.n_ctx},
        "special_ids": {"bos": task.bos_id, "eos": task.eos_id, "pad": task.pad_id},
        "prepend_bos": True,
        "padding_side": "right",
        "position_policy": list(task.train_position_names) if task.train_position_names else "all non-special",
        "train_config": cfg.to_dict(),
    }
    bank = DecoderBank.create(sites, widths, topology=cfg.topology, vocab_size=task.d_vocab, n_ctx=task.n_ctx,
                              bos_id=task.bos_id, eos_id=task.eos_id, pad_id=task.pad_id, meta=meta,
                              noise_flag=cfg.train_noise_flag, **cfg.decoder)
    mask = task.train_position_mask(probe)
    stats = {}
    for site, a in first_acts.items():
        a = a[mask.to(a.device)].float()
        dec, idx = bank.lookup(site)
        mean, std = float(a.mean()), float(a.std())
        dec.init_site_embedding(idx, mean, std)
        stats[str(site)] = {"mean": mean, "std": std}
    bank.meta["site_stats"] = stats
    return bank


def _checkpoint_to_resume(out: Path | None, resume: bool) -> Path | None:
    """The checkpoint this call continues, if any.

    Raises:
        OutputExistsError: (a ``FileExistsError``) ``out`` holds checkpoints and ``resume`` is False.
    """
    ckpt = latest_checkpoint(out) if out is not None else None
    if ckpt is not None and not resume:
        raise OutputExistsError(
            f"{out} already holds checkpoints (newest {ckpt.name}); resume from it, or choose another out_dir"
        )
    return ckpt


def _open_log(out: Path, run: RunState) -> IO[str]:
    """Write ``config.json`` and restart ``log.jsonl`` from the run's history (a resumed run
    has no duplicate steps); the log is returned open for appending.
    """
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", run.bank.meta["train_config"])
    with (out / "log.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in run.history)
    return (out / "log.jsonl").open("a")


def _held_out(task: Task, eval_data: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` held-out inputs (a seeded random subset) and one trainable position each."""
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(eval_data.shape[0], generator=g)[:n]
    tokens = eval_data[idx]
    return tokens, sample_positions(task, tokens, g, 0.0)
