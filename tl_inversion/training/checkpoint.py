"""A training run's state, its atomic checkpoints, resuming and warm starts.

:class:`RunState` holds everything a checkpoint records: decoder weights (through the
bank), optimizer, scheduler, step, training seconds, the data generator and the global RNG
states, the logged history and the latest faithfulness rates. A checkpoint is a folder
``checkpoints/step_XXXXXXXX`` written atomically (a killed writer leaves no half folder),
and ``checkpoints/latest.json`` names the newest one; a killed run resumed from it reaches
the same weights as an uninterrupted run.

Resuming refuses a checkpoint of another configuration (:data:`RESUMABLE_CHANGES` lists
the fields that may change), another task or another probed model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tl_inversion.decoding.bank import BANK_JSON, WEIGHTS, DecoderBank
from tl_inversion.decoding.stacking import stack_same_shaped
from tl_inversion.errors import ConfigError, InputValueError, ModelMismatchError
from tl_inversion.io import atomic_write_dir, atomic_write_json
from tl_inversion.model import fingerprints
from tl_inversion.training.config import RESUMABLE_CHANGES, TrainConfig
from tl_inversion.training.schedule import lr_lambda

__all__ = ["LATEST", "RunState", "latest_checkpoint", "check_resumable", "check_same_task_and_model", "warm_start"]

#: The file under ``checkpoints/`` naming the newest complete checkpoint.
LATEST = "latest.json"
_STATE_JSON = "trainer_state.json"
_STATE_PT = "trainer.pt"


class RunState:
    """The state of one training run (everything a checkpoint holds).

    Args:
        bank: the bank being trained (its decoders are the run's parameters).
        cfg: the training config (optimizer, schedule, stacking, compiling, seed).
        device: where the decoders train (the data generator lives there too).

    Attributes:
        stacks, singles: the decoders trained as vectorised stacks and one at a time.
        loss_of: ``{decoder: per-step loss function}`` of the single decoders.
        opt, sched: AdamW and its ``LambdaLR`` schedule.
        step: optimizer steps taken so far (over all calls).
        elapsed_s: training seconds of earlier calls (restored from checkpoints).
        call_start: ``time.perf_counter()`` when this call's training began.
        data_gen: the generator of batches, positions and noise (on ``device``).
        history: the logged records; rates: ``{site: latest faithfulness rate}``.
    """

    def __init__(self, bank: DecoderBank, cfg: TrainConfig, device: torch.device) -> None:
        self.bank = bank
        self.cfg = cfg
        self.device = device
        if cfg.topology == "per_hook" and cfg.stack:
            self.stacks, self.singles = stack_same_shaped(bank.decoders)
        else:
            self.stacks, self.singles = [], list(bank.decoders)
        # the per-step loss of each single decoder (compiled on request, like the stacks)
        self.loss_of = {dec: dec.unchecked_loss for dec in self.singles}
        if cfg.compile:
            for stack in self.stacks:
                stack.compile()
            self.loss_of = {dec: torch.compile(fn, dynamic=False) for dec, fn in self.loss_of.items()}
        params = [p for d in self.singles for p in d.parameters()]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        for stack in self.stacks:
            groups += stack.param_groups(cfg.weight_decay)
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.step = 0
        self.elapsed_s = 0.0
        self.call_start = time.perf_counter()
        # the data pipeline runs where the decoders train (no host work or copies per step)
        self.data_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.rates: dict[str, float] = {}

    def trained_s(self) -> float:
        """Training seconds over all calls of this run (wall clock)."""
        return self.elapsed_s + time.perf_counter() - self.call_start

    def push(self) -> None:
        """Make the bank's decoder objects current (stacked parameters are the trained ones)."""
        for stack in self.stacks:
            stack.push()

    def clip(self, max_norm: float) -> None:
        """Clip each decoder's gradient norm to ``max_norm`` (separately per decoder)."""
        for dec in self.singles:
            torch.nn.utils.clip_grad_norm_(dec.parameters(), max_norm)
        for stack in self.stacks:
            stack.clip_grad_norm_(max_norm)

    def save(self, folder: Path) -> Path:
        """Write a checkpoint ``folder/step_XXXXXXXX`` atomically, point ``latest.json`` at it
        and delete all but the newest ``cfg.keep_checkpoints``.

        Returns:
            The checkpoint folder.
        """
        self.push()
        name = f"step_{self.step:08d}"
        state = {
            "step": self.step,
            "elapsed_s": self.trained_s(),
            "history": self.history,
            "rates": self.rates,
            "python_random": repr(random.getstate()),
            # init_banks as the run started (a resumed call may name none): the bank's record
            "config": {**self.cfg.to_dict(), "init_banks": self.bank.meta["train_config"].get("init_banks", [])},
        }

        def fill(tmp: Path) -> None:
            save_file(self.bank.state_dict(), str(tmp / WEIGHTS))
            atomic_write_json(tmp / BANK_JSON, self.bank.to_json())
            torch.save(
                {
                    "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(),
                    "data_gen": self.data_gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "numpy_rng": np.random.get_state(),
                },
                tmp / _STATE_PT,
            )
            atomic_write_json(tmp / _STATE_JSON, state)

        path = atomic_write_dir(folder / name, fill)
        atomic_write_json(folder / LATEST, {"checkpoint": name, "step": self.step})
        kept = sorted(p for p in folder.glob("step_*") if p.is_dir())
        for old in kept[: max(0, len(kept) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def load(self, path: Path) -> None:
        """Restore the run from checkpoint ``path`` (the bank keeps this call's config).

        Raises:
            InputValueError: the data generator was saved on another device type.
        """
        state = load_file(str(path / WEIGHTS))
        for i, dec in enumerate(self.bank.decoders):
            prefix = f"decoder{i}."
            dec.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        for stack in self.stacks:
            stack.pull()
        saved = json.loads((path / BANK_JSON).read_text())
        # this call's config (a resume may raise steps or the time limit), the rest as saved
        self.bank.meta = {**saved["meta"], "train_config": self.cfg.to_dict()}
        blob = torch.load(path / _STATE_PT, map_location="cpu", weights_only=False)
        self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])
        try:
            self.data_gen.set_state(blob["data_gen"])
        except RuntimeError as e:
            raise InputValueError(
                f"cannot resume {path} on {self.device}: its data generator was saved on another device type "
                "(resume on the device type the run started on)"
            ) from e
        torch.set_rng_state(blob["torch_rng"])
        if blob.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        np.random.set_state(blob["numpy_rng"])
        info = json.loads((path / _STATE_JSON).read_text())
        self.step = int(info["step"])
        self.elapsed_s = float(info.get("elapsed_s", 0.0))
        self.history = list(info["history"])
        self.rates = dict(info["rates"])
        # the run's record names the banks it started from, not this call's init_banks
        self.bank.meta["train_config"]["init_banks"] = info["config"].get("init_banks", [])


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir/checkpoints``, if any.

    Args:
        out_dir: a training run's output folder.

    Returns:
        The folder ``latest.json`` names, else the highest ``step_*`` folder, else ``None``.
    """
    folder = Path(out_dir) / "checkpoints"
    pointer = folder / LATEST
    if pointer.is_file():
        path = folder / json.loads(pointer.read_text())["checkpoint"]
        if path.is_dir():
            return path
    found = sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []
    return found[-1] if found else None


def check_resumable(ckpt: Path, cfg: TrainConfig) -> None:
    """Refuse to continue a checkpoint under a different training configuration.

    A field the checkpoint lacks (added later) counts as its default.

    Raises:
        ConfigError: fields outside :data:`RESUMABLE_CHANGES` differ (all are named with
            both values; ``field`` is the first in alphabetical order).
    """
    saved = {**json.loads(json.dumps(TrainConfig.defaults())), **json.loads((ckpt / _STATE_JSON).read_text())["config"]}
    now = json.loads(json.dumps(cfg.to_dict()))
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
            if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)}
    if diff:
        raise ConfigError(
            f"cannot resume {ckpt}: the training config differs from the checkpoint's in "
            + ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in sorted(diff.items()))
            + f". Only {', '.join(RESUMABLE_CHANGES)} may change; use another out_dir for a new run.",
            field=sorted(diff)[0],
        )


def check_same_task_and_model(ckpt: Path, bank: DecoderBank) -> None:
    """Refuse a checkpoint trained on another task or another probed model than ``bank``'s.

    Args:
        ckpt: the checkpoint folder.
        bank: this call's new bank (its ``meta`` records the task and the probe signature
            of the model).

    Raises:
        InputValueError: the task (name, vocabulary, length) or the probed activations differ.
    """
    saved_meta = json.loads((ckpt / BANK_JSON).read_text())["meta"]
    saved_task, now_task = saved_meta.get("task", {}), bank.meta["task"]
    if any(saved_task.get(k) != now_task.get(k) for k in ("name", "vocab_sha256", "n_ctx")):
        raise InputValueError(
            f"cannot resume {ckpt}: it was trained on task {saved_task.get('name')!r} "
            f"(vocabulary {saved_task.get('vocab_sha256', '?')[:12]}, {saved_task.get('n_ctx')} positions), "
            f"this run has task {now_task['name']!r} (vocabulary {now_task['vocab_sha256'][:12]}, "
            f"{now_task['n_ctx']} positions). Use the checkpoint's task, or another out_dir."
        )
    changed = fingerprints.compare_probe(saved_meta.get("probe", {}), bank.meta["probe"])
    if changed:
        raise InputValueError(
            f"cannot resume {ckpt}: the probed model computes other activations than the one this run "
            f"started on (at {', '.join(changed)}): another model or other weight processing. "
            "Resume with the same model and processing, or use another out_dir."
        )


def warm_start(bank: DecoderBank, paths: Sequence[str], model: Any, task: Any, out: Path | None) -> None:
    """Load ``init_banks`` (merged) into the new bank's decoders.

    Args:
        bank: the new bank.
        paths: the source bank folders.
        model: this run's probed model (the sources must match it).
        task: this run's task (the sources must match it).
        out: the run's output folder (its ``bank/`` is refused).

    Raises:
        ConfigError: a source is this run's own output bank (``field="init_banks"``).
        InputValueError, SiteError, LoadError, ModelMismatchError, FileNotFoundError: a
            source that cannot be loaded or does not fit (the message starts with "warm
            start (init_banks)"); nothing is copied then.
    """
    where = "warm start (init_banks)"
    if out is not None and any(Path(p).resolve() == (out / "bank").resolve() for p in paths):
        raise ConfigError(f"{where}: {out / 'bank'} is this run's own output bank, which the run replaces when it "
                          "ends; copy it to another folder and start from the copy, or choose another out_dir",
                          field="init_banks")
    try:
        sources = [DecoderBank.load(p, device="cpu") for p in paths]
        source = DecoderBank.merge(sources) if len(sources) > 1 else sources[0]
        source.check_model(model)
        source.check_task(task)
        bank.load_weights_from(source)
    except (ValueError, FileNotFoundError, ModelMismatchError) as e:  # SiteError is a ValueError
        try:
            err = type(e)(f"{where}: {e}")
        except TypeError:  # an error type with another signature (e.g. a bad bank.json's JSONDecodeError)
            err = InputValueError(f"{where}: {e}")
        raise err from e
