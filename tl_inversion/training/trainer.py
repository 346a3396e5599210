"""Training decoders on activations harvested on the fly (InversionView Sec. 3, App. C).

Each step draws a batch of task inputs, picks one random trainable position per input
(the task may restrict them: counting trains on the query letter and ``:``), replaces it
by BOS with probability ``bos_prob`` (the "no information" condition), reads every site
in ONE forward of the probed model, and trains the decoders to generate the whole input
from the activation (next-token cross-entropy, PAD ignored).

* ``per_hook`` topology: every decoder gets the whole batch at its own site.
* ``shared`` topology: each input is assigned one site; with ``rebalance`` the site is
  drawn with probability proportional to ``exp(T * (mean_rate - site_rate))`` from the
  latest faithfulness rates (the paper's intended, never-wired rebalancing; T = 6).

Faithfulness (paper's definition) is measured every ``eval_every`` steps on fixed held-out
activations: one temperature-1 sample per activation, fraction with D < epsilon. Runs are
checkpointed atomically (weights, optimizer, scheduler, step, RNG states, history) and a
killed run resumes from its last checkpoint to the same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.model.activations import activations_at, check_tokens, harvest

from tl_inversion.model import fingerprints
from tl_inversion.decoding.bank import BANK_JSON, WEIGHTS, DecoderBank, ModelMismatchError
from tl_inversion.devices import resolve_device
from tl_inversion.training.noise import NOISE_SHAPES, perturb
from tl_inversion.io import atomic_write_dir, atomic_write_json, plain_bool, plain_number
from tl_inversion.model.sites import Site, parse_sites, validate_sites
from tl_inversion.decoding.stacking import stack_same_shaped
from tl_inversion.tasks import as_task
from tl_inversion.tasks.base import CharTask
from tl_inversion.inversion.verify import membership
from tl_inversion.errors import InputTypeError, InputValueError, SiteError

LATEST = "latest.json"
LOG_EVERY = 50  # steps between log records (losses are read from the GPU only then)


@dataclass
class TrainConfig:
    """How to train decoders.

    Args:
        sites: site strings to train decoders for (see :mod:`tl_inversion.sites`); stored in
            canonical spelling, a site given twice is kept once.
        topology: ``"per_hook"`` (one decoder per site, default) or ``"shared"``.
        steps: optimizer steps.
        batch_size: inputs per step (each decoder sees all of them in ``per_hook``).
        lr: peak learning rate of AdamW.
        warmup_steps: linear warm-up steps.
        schedule: ``"constant"`` after warm-up (the paper) or ``"cosine"`` decay to 10%.
        weight_decay: AdamW weight decay (paper 0.01).
        grad_clip: gradient-norm clip per decoder (paper 1.0).
        bos_prob: probability of replacing the position by BOS (paper 0.01).
        train_noise: in ``[0, 1]``: condition the decoder on ``z + n`` with
            ``n ~ N(0, I) * u * train_noise * ||z|| / sqrt(d)`` (``d`` = the site's width),
            ``u`` drawn uniformly from ``[0, 1]`` per input: a noise of norm about
            ``u * train_noise`` in units of the distance D. 0 (default)
            trains on exact activations, as the paper did. With noise the decoder learns a
            smoothed posterior whose ``log p(x | z_q)`` falls with D(x, z_q), so near the
            epsilon boundary members outrank non-members (completeness AUROC) instead of
            both being unseen (see :func:`perturb`).
        train_noise_shape: ``"gaussian"`` (the above, default), ``"ball"`` (noise uniform
            in the ball of radius ``train_noise * ||z||``; its posterior weights inputs by
            ``||f||^-d``) or ``"preimage"`` (the kernel whose posterior is uniform over the
            ``train_noise``-preimage of the condition; needs ``train_noise < 1``). See
            :mod:`tl_inversion.noise`.
        train_noise_flag: with ``train_noise``: blur only a random half of the rows and tell
            the decoder which (a noise-flag column, :meth:`DecoderBank.pad`), so one
            network learns both the exact posterior (flag 0: sampling, faithfulness) and
            the blurred one (flag 1: completeness scoring). See :func:`condition`.
        eval_every: steps between faithfulness measurements (0: only at the end).
        eval_n: held-out activations per site for the faithfulness rate (paper 200).
        epsilon: membership threshold of the faithfulness rate (paper 0.1).
        metric: ``"l2"`` (normalised L2, paper) or ``"cosine"``.
        rebalance: shared topology: draw sites by ``exp(T (mean - rate))``.
        rebalance_temperature: T of the rebalancing (paper 6).
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: how many checkpoints to keep.
        seed: seed of initialisation, data order and evaluation samples.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        amp: bf16 autocast on CUDA.
        stack: ``per_hook``: train decoders of one shape as one vectorised module
            (:mod:`tl_inversion.stacking`; same mathematics, far fewer kernel launches).
        compile: compile each step's loss (forward and backward) with ``torch.compile``
            (fuses elementwise work; the first steps are slow while it compiles; on CUDA
            it needs Triton; torch 2.13's CPU compiler fails on this step, and a backend
            failure stops training with a ValueError that says so). Off by default; the
            result is unchanged up to rounding.
        time_limit_s: stop (evaluate, checkpoint, save) once the run has trained this many
            seconds, counted over all calls (a resumed run continues the clock from its
            checkpoint, as it continues the step count), even before ``steps``; the
            learning-rate schedule then follows that time (so a time-limited run is not
            bit-reproducible); 0 means no limit.
        decoder: :class:`~tl_inversion.decoder.DecoderConfig` fields (``d_model``,
            ``n_layers``, ``n_heads``, ``n_cond_blocks``...).
        init_banks: bank folders (merged) whose decoders start this run instead of a random
            initialisation (a warm start; CLI ``--init-bank``): they must cover this run's
            sites with the same decoder shape, noise flag, probed model and task
            (:meth:`~tl_inversion.bank.DecoderBank.load_weights_from`), and not be the
            run's own output bank (``out_dir/bank``, replaced when the run ends). The
            optimizer, schedule and step count start afresh; a run resumed from its own
            checkpoint does not read them (the bank records the ones it started from).
            Empty or ``None``: random initialisation.
    """

    sites: list[str]
    topology: str = "per_hook"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "constant"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bos_prob: float = 0.01
    train_noise: float = 0.0
    train_noise_shape: str = "gaussian"
    train_noise_flag: bool = False
    eval_every: int = 500
    eval_n: int = 200
    epsilon: float = 0.1
    metric: str = "l2"
    rebalance: bool = True
    rebalance_temperature: float = 6.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    stack: bool = True
    compile: bool = False
    time_limit_s: float = 0.0
    decoder: dict[str, Any] = field(default_factory=lambda: {"d_model": 256, "n_layers": 2, "n_heads": 4})
    init_banks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # NumPy / torch scalars become plain numbers (the config is written as JSON and compared on resume)
        for name in ("steps", "batch_size", "warmup_steps", "eval_every", "eval_n", "checkpoint_every",
                     "keep_checkpoints", "seed"):
            setattr(self, name, plain_number(name, getattr(self, name), int))
        for name in ("lr", "weight_decay", "grad_clip", "bos_prob", "train_noise", "epsilon",
                     "rebalance_temperature", "time_limit_s"):
            setattr(self, name, plain_number(name, getattr(self, name), float))
        for name in ("train_noise_flag", "rebalance", "amp", "stack", "compile"):
            setattr(self, name, plain_bool(name, getattr(self, name)))
        if self.topology not in ("per_hook", "shared"):
            raise InputValueError(f"topology must be 'per_hook' or 'shared', got {self.topology!r}")
        if self.schedule not in ("constant", "cosine"):
            raise InputValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.metric not in ("l2", "cosine"):
            raise InputValueError(f"metric must be 'l2' or 'cosine', got {self.metric!r}")
        for name in ("steps", "batch_size", "eval_n"):
            if getattr(self, name) < 1:
                raise InputValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise InputValueError(f"{name} must be >= 0 steps (eval_every/checkpoint_every 0: only at the end), "
                                 f"got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputValueError(f"lr must be a positive, finite learning rate, got {self.lr}")
        if self.init_banks is None:
            self.init_banks = []
        if isinstance(self.init_banks, (str, Path)):
            self.init_banks = [self.init_banks]
        if not all(isinstance(b, (str, Path)) for b in self.init_banks):
            raise InputTypeError(f"init_banks must be a list of bank folders, got {self.init_banks!r}")
        self.init_banks = [str(b) for b in self.init_banks]
        # one spelling per site, each once (like validate_sites), so a resumed run compares equal
        self.sites = list(dict.fromkeys(str(s) for s in parse_sites(self.sites)))
        if not self.time_limit_s >= 0:  # also refuses NaN
            raise InputValueError(f"time_limit_s must be >= 0 seconds (0: no limit), got {self.time_limit_s}")
        if not 0 <= self.bos_prob < 1:
            raise InputValueError(f"bos_prob must be in [0, 1), got {self.bos_prob}")
        if not 0 <= self.train_noise <= 1:  # also refuses NaN
            raise InputValueError(f"train_noise must be in [0, 1] (< 1 for train_noise_shape 'preimage'; units of the "
                             f"distance D, whose epsilon is 0.1; 0: none; above 1 the noise outweighs the activation), "
                             f"got {self.train_noise}")
        if self.train_noise_shape not in NOISE_SHAPES:
            raise InputValueError(f"train_noise_shape must be one of {NOISE_SHAPES}, got {self.train_noise_shape!r}")
        if self.train_noise_shape == "preimage" and self.train_noise >= 1:
            raise InputValueError("train_noise_shape 'preimage' needs train_noise < 1 (its radius, in units of D; "
                             f"epsilon is 0.1), got {self.train_noise}")
        if self.train_noise_flag and self.train_noise == 0:
            raise InputValueError("train_noise_flag (CLI --train-noise-flag) needs a train_noise > 0 (CLI --train-noise): "
                             "the flag tells the decoder which rows are blurred; with no noise there is nothing to flag")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns: the bank and its history (one row per logged step)."""

    bank: DecoderBank
    history: pd.DataFrame
    faithfulness: pd.DataFrame
    seconds: float
    samples_per_second: float
    steps_this_call: int = 0  # optimizer steps taken by this call (0: the run had already finished)


def sample_positions(
    task: CharTask,
    tokens: Int[Tensor, "batch n_ctx"],
    generator: torch.Generator,
    bos_prob: float,
    *,
    check: bool = True,
) -> Int[Tensor, " batch"]:
    """One random trainable position per row; BOS (0) with probability ``bos_prob``.

    ``tokens`` and ``generator`` must be on the same device; the positions are on it too.
    ``check=False`` skips the test that every row has a trainable position (a host sync;
    :func:`train` runs it once over the whole training set instead).

    Raises:
        ValueError: a row has no trainable position (with ``check``).
    """
    mask = task.train_position_mask(tokens).float()
    if check:
        _check_trainable(mask)
    pos = torch.multinomial(mask, 1, generator=generator).squeeze(-1)
    if bos_prob > 0:
        to_bos = torch.rand(tokens.shape[0], generator=generator, device=tokens.device) < bos_prob
        pos = torch.where(to_bos, torch.zeros_like(pos), pos)
    return pos


@contextlib.contextmanager
def _explain_compile_errors(enabled: bool, device: torch.device) -> Iterator[None]:
    """Turn a failure of torch.compile's backend into a one-line ValueError that names the way out."""
    try:
        yield
    except Exception as e:
        if enabled and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise InputValueError(
                f"torch.compile failed on {device.type} with torch {torch.__version__} ({type(e).__name__}: {first}); "
                "train without compiling (compile=False; CLI: leave out --compile): same mathematics, slower steps"
            ) from e
        raise


def condition(
    bank: DecoderBank, site: Site, z: Float[Tensor, "batch d_site"], cfg: TrainConfig, generator: torch.Generator
) -> Float[Tensor, "batch d_act"]:
    """The condition a training step feeds a site's decoder for activations ``z``.

    Without ``cfg.train_noise_flag``: ``bank.pad(perturb(z))`` (every row blurred by
    ``cfg.train_noise``; exact when it is 0). With it: each row is blurred with probability
    1/2 and the bank's noise-flag column says which (1 blurred, 0 exact), so the decoder
    learns p(x | z) (flag 0) and the blurred posterior (flag 1) in one network.

    Args:
        bank: the bank being trained; site: the site of ``z``.
        z: ``[batch, d_site]`` exact activations.
        cfg: the training config (``train_noise``, ``train_noise_shape``, ``train_noise_flag``).
        generator: the run's data generator (the draws are part of its checkpointed state).

    Returns:
        ``[batch, d_act]`` on the bank's device.

    Source: this project's addition (the paper trains on exact activations only).
    """
    blurred = perturb(z, cfg.train_noise, generator, cfg.train_noise_shape)
    if not cfg.train_noise_flag:
        return bank.pad(blurred, site)
    flag = torch.rand(z.shape[0], generator=generator, device=generator.device) < 0.5
    return bank.pad(torch.where(flag[:, None], blurred, z.to(blurred.device)), site, blurred=flag, check=False)


def _check_trainable(mask: Tensor) -> None:
    if bool((mask.sum(-1) == 0).any()):
        raise InputValueError("an input has no trainable position (check the task's position policy)")


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Learning-rate multiplier: linear warm-up, then constant or cosine decay to 10%.

    Args:
        step: the optimizer step (0-based); warmup_steps, total_steps: lengths in steps.
        schedule: ``"constant"`` or ``"cosine"``.

    Returns:
        A factor in (0, 1] applied to the peak learning rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    return lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.schedule)


class _Run:
    """The state of one training run (everything a checkpoint holds)."""

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
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.step = 0
        self.elapsed_s = 0.0  # training seconds of earlier calls (restored from checkpoints)
        self.call_start = time.perf_counter()  # when this call's training began
        # the data pipeline runs where the decoders train (no host work or copies per step)
        self.data_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.rates: dict[str, float] = {}

    def push(self) -> None:
        """Make the bank's decoder objects current (stacked parameters are the trained ones)."""
        for stack in self.stacks:
            stack.push()

    def clip(self, max_norm: float) -> None:
        for dec in self.singles:
            torch.nn.utils.clip_grad_norm_(dec.parameters(), max_norm)
        for stack in self.stacks:
            stack.clip_grad_norm_(max_norm)

    # checkpoints --------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        self.push()
        name = f"step_{self.step:08d}"
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed_s + time.perf_counter() - self.call_start,
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
                tmp / "trainer.pt",
            )
            atomic_write_json(tmp / "trainer_state.json", state)

        path = atomic_write_dir(folder / name, fill)
        atomic_write_json(folder / LATEST, {"checkpoint": name, "step": self.step})
        kept = sorted(p for p in folder.glob("step_*") if p.is_dir())
        for old in kept[: max(0, len(kept) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def load(self, path: Path) -> None:
        state = load_file(str(path / WEIGHTS))
        for i, dec in enumerate(self.bank.decoders):
            prefix = f"decoder{i}."
            dec.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        for stack in self.stacks:
            stack.pull()
        saved = json.loads((path / BANK_JSON).read_text())
        # this call's config (a resume may raise steps or the time limit), the rest as saved
        self.bank.meta = {**saved["meta"], "train_config": self.cfg.to_dict()}
        blob = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
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
        info = json.loads((path / "trainer_state.json").read_text())
        self.step = int(info["step"])
        self.elapsed_s = float(info.get("elapsed_s", 0.0))
        self.history = list(info["history"])
        self.rates = dict(info["rates"])


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir/checkpoints``, if any."""
    folder = Path(out_dir) / "checkpoints"
    pointer = folder / LATEST
    if pointer.is_file():
        path = folder / json.loads(pointer.read_text())["checkpoint"]
        if path.is_dir():
            return path
    found = sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []
    return found[-1] if found else None


# Fields that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = ("steps", "time_limit_s", "eval_every", "checkpoint_every", "keep_checkpoints", "device", "compile",
                     "init_banks")  # a resumed run starts from its checkpoint, not from init_banks


# how `tl-inversion train` spells the TrainConfig fields it sets (the rest are Python-only)
_CLI_FLAGS = {
    **{k: "--" + k.replace("_", "-") for k in ("topology", "steps", "batch_size", "lr", "warmup_steps", "schedule",
                                             "train_noise", "train_noise_shape", "train_noise_flag", "eval_every",
                                             "eval_n", "checkpoint_every", "seed", "compile", "device")},
    "time_limit_s": "--time-limit", "stack": "--no-stack", "rebalance": "--no-rebalance",
    "decoder": "--d-model, --n-layers, --n-heads", "sites": "--sites or --preset", "init_banks": "--init-bank",
}


def _cli_name(field_name: str) -> str:
    """`` (CLI --flag)`` for a TrainConfig field `tl-inversion train` sets; "" for the Python-only ones."""
    return f" (CLI {_CLI_FLAGS[field_name]})" if field_name in _CLI_FLAGS else ""


def _warm_start(bank: DecoderBank, paths: Sequence[str], model: Any, task: CharTask, out: Path | None) -> None:
    """Load ``init_banks`` (merged) into the new bank's decoders; errors say they come from
    the warm start."""
    where = "warm start (init_banks, CLI --init-bank)"
    if out is not None and any(Path(p).resolve() == (out / "bank").resolve() for p in paths):
        raise InputValueError(f"{where}: {out / 'bank'} is this run's own output bank, which the run replaces when it "
                         "ends; copy it to another folder and start from the copy, or choose another out_dir (--out)")
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
            err = ValueError(f"{where}: {e}")
        raise err from e


def _check_resumable(ckpt: Path, cfg: TrainConfig) -> None:
    """Refuse to continue a checkpoint under a different training configuration."""
    # a key added after the checkpoint was written counts as its default (the run used it)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    saved = {**json.loads(json.dumps(defaults)), **json.loads((ckpt / "trainer_state.json").read_text())["config"]}
    now = json.loads(json.dumps(cfg.to_dict()))
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
            if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)}
    if diff:
        raise InputValueError(
            f"cannot resume {ckpt}: the training config differs from the checkpoint's in "
            + ", ".join(f"{k}{_cli_name(k)} (checkpoint {a!r}, now {b!r})" for k, (a, b) in sorted(diff.items()))
            + f". Only {', '.join(k + _cli_name(k) for k in RESUMABLE_CHANGES)} may change; use another out_dir (CLI: --out) for a new run."
        )


def _held_out(task: CharTask, eval_data: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(eval_data.shape[0], generator=g)[:n]
    tokens = eval_data[idx]
    return tokens, sample_positions(task, tokens, g, 0.0)


def measure_faithfulness(
    bank: DecoderBank,
    model: Any,
    task: CharTask,
    tokens: Int[Tensor, "n n_ctx"],
    positions: Int[Tensor, " n"],
    *,
    epsilon: float = 0.1,
    metric: str = "l2",
    seed: int = 0,
    temperature: float = 1.0,
) -> pd.DataFrame:
    """The paper's per-site faithfulness rate on held-out activations.

    For each (input, position) the site's activation z_q is decoded once at
    ``temperature`` (paper: 1); the sample is re-run through the probed model and its
    membership distance (best non-special position) compared with ``epsilon``.

    Args:
        bank: the decoders; model: the probed model; task: the task (special tokens).
        tokens: held-out inputs ``[n, n_ctx]``; positions: one position per input ``[n]``.
        epsilon: membership threshold (paper 0.1); metric: ``"l2"`` or ``"cosine"``.
        seed: seed of the decoder samples.

    Returns:
        DataFrame indexed by site with ``faithfulness`` (fraction in [0, 1]), ``mean_distance``,
        ``median_distance``, ``valid`` (fraction obeying the task grammar) and ``n``.

    Source: InversionView App. C ("faithfulness rate").
    """
    sites = bank.sites
    z_by_site = activations_at(model, tokens, positions, sites, validate=False)
    out = []
    for site in sites:
        dec, idx = bank.lookup(site)
        z_q = z_by_site[site]
        g = torch.Generator(device=bank.device).manual_seed(seed)
        was_training = dec.training
        dec.eval()
        samples = bank.to_task_tokens(dec.generate(bank.pad(z_q, site), idx, temperature=temperature, generator=g))
        dec.train(was_training)
        dist, _ = membership(model, samples, site, z_q, task.special_ids, metric=metric)
        dist = dist.float().cpu()
        out.append(
            {
                "site": str(site),
                "faithfulness": float((dist < epsilon).float().mean()),
                "mean_distance": float(dist[dist.isfinite()].mean()) if bool(dist.isfinite().any()) else float("inf"),
                "median_distance": float(dist.median()),
                "valid": float(task.is_valid(samples.cpu()).float().mean()),
                "n": int(dist.numel()),
            }
        )
    return pd.DataFrame(out).set_index("site")


def _init_site_stats(bank: DecoderBank, acts: dict[Site, Tensor]) -> dict[str, dict[str, float]]:
    stats = {}
    for site, a in acts.items():
        dec, idx = bank.lookup(site)
        mean, std = float(a.float().mean()), float(a.float().std())
        dec.init_site_embedding(idx, mean, std)
        stats[str(site)] = {"mean": mean, "std": std}
    return stats


def train(
    model: Any,
    task: CharTask,
    train_data: Int[Tensor, "n n_ctx"],
    eval_data: Int[Tensor, "m n_ctx"],
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    save_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Train decoders for ``cfg.sites`` of ``model`` on inputs of ``task``.

    Args:
        model: the probed ``HookedTransformer`` or ``TransformerBridge`` (any device).
        task: the task or its registered name (vocabulary, special tokens, trainable positions).
        train_data: training inputs ``[n, n_ctx]`` (token ids, BOS first, right-padded).
        eval_data: held-out inputs for the faithfulness rate.
        cfg: the training configuration.
        out_dir: folder for checkpoints (``checkpoints/``), the log (``log.jsonl``) and the
            final bank (``bank/``); ``None`` keeps everything in memory.
        resume: continue from the newest checkpoint in ``out_dir`` when there is one.
        progress: show a tqdm progress bar.
        callback: called as ``callback(step, record)`` after every step (e.g. to stop); on
            steps that are not logged the record's losses are still 0-dim tensors.
        save_dtype: dtype of the final bank's weights on disk (e.g. ``torch.float16``).

    Returns:
        :class:`TrainResult` with the bank (fingerprint, task and config recorded), the
        loss/faithfulness history and throughput (inputs per second).

    Raises:
        SiteError: a site does not exist on the model.
        ValueError: data of the wrong width, a bad config.

    Source: InversionView Sec. 3 and App. C (objective, BOS baseline, faithfulness rate,
    rebalancing).
    """
    task = as_task(task)
    device = resolve_device(cfg.device)
    sites = validate_sites(cfg.sites, model)
    if train_data.shape[-1] != task.n_ctx or eval_data.shape[-1] != task.n_ctx:
        raise InputValueError(f"inputs must be [n, {task.n_ctx}] token ids of task {task.name!r}")
    if train_data.shape[0] == 0 or eval_data.shape[0] == 0:
        raise InputValueError("train_data and eval_data need at least one input each")
    if task.n_ctx > int(model.cfg.n_ctx):
        raise InputValueError(f"task inputs have {task.n_ctx} positions but the model's context is {model.cfg.n_ctx}")
    check_tokens(model, train_data, "train_data")
    check_tokens(model, eval_data, "eval_data")
    if task.d_vocab != int(model.cfg.d_vocab):
        warnings.warn(
            f"task {task.name!r} has {task.d_vocab} tokens but the model's vocabulary has {int(model.cfg.d_vocab)}: "
            "is this the model that was trained on this task? (Tokenizer tasks on models with a padded "
            "vocabulary differ legitimately.)",
            stacklevel=2,
        )
    torch.manual_seed(cfg.seed)
    probe = train_data[:64]
    first_acts = harvest(model, probe, sites, validate=False)
    widths = {str(s): int(a.shape[-1]) for s, a in first_acts.items()}
    meta = {
        "fingerprint": fingerprints.fingerprint(model),
        "probe": fingerprints.probe_signature(model, sites),
        "task": {"name": task.name, "vocab": getattr(task, "chars", None) or list(task.vocab), "vocab_sha256": task.vocab_hash(), "n_ctx": task.n_ctx},
        "special_ids": {"bos": task.bos_id, "eos": task.eos_id, "pad": task.pad_id},
        "prepend_bos": True,
        "padding_side": "right",
        "position_policy": list(task.train_position_names) if task.train_position_names else "all non-special",
        "train_config": cfg.to_dict(),
    }
    bank = DecoderBank.create(
        sites,
        widths,
        topology=cfg.topology,
        vocab_size=task.d_vocab,
        n_ctx=task.n_ctx,
        bos_id=task.bos_id,
        eos_id=task.eos_id,
        pad_id=task.pad_id,
        meta=meta,
        noise_flag=cfg.train_noise_flag,
        **cfg.decoder,
    )
    mask = task.train_position_mask(probe)
    bank.meta["site_stats"] = _init_site_stats(bank, {s: a[mask.to(a.device)] for s, a in first_acts.items()})
    out = Path(out_dir) if out_dir is not None else None
    resuming = out is not None and resume and latest_checkpoint(out) is not None
    if cfg.init_banks and not resuming:  # a resumed run continues from its checkpoint instead
        _warm_start(bank, cfg.init_banks, model, task, out)
    bank.to(device)
    for d in bank.decoders:
        d.train()
    run = _Run(bank, cfg, device)
    log = None
    if out is not None:
        ckpt = latest_checkpoint(out)
        if ckpt is not None and not resume:
            raise FileExistsError(
                f"{out} already holds checkpoints (newest {ckpt.name}); resume from it, or choose another out_dir"
            )
        if ckpt is not None:
            _check_resumable(ckpt, cfg)
            saved_meta = json.loads((ckpt / BANK_JSON).read_text())["meta"]
            saved_task, now_task = saved_meta.get("task", {}), bank.meta["task"]
            if any(saved_task.get(k) != now_task.get(k) for k in ("name", "vocab_sha256", "n_ctx")):
                raise InputValueError(
                    f"cannot resume {ckpt}: it was trained on task {saved_task.get('name')!r} "
                    f"(vocabulary {saved_task.get('vocab_sha256', '?')[:12]}, {saved_task.get('n_ctx')} positions), "
                    f"this run has task {now_task['name']!r} (vocabulary {now_task['vocab_sha256'][:12]}, "
                    f"{now_task['n_ctx']} positions). Use the checkpoint's task, or another out_dir (CLI: --out)."
                )
            changed = fingerprints.compare_probe(saved_meta.get("probe", {}), bank.meta["probe"])
            if changed:
                raise InputValueError(
                    f"cannot resume {ckpt}: the probed model computes other activations than the one this run "
                    f"started on (at {', '.join(changed)}): another model or other weight processing. "
                    "Resume with the same model and processing, or use another out_dir (CLI: --out)."
                )
            run.load(ckpt)
            # the run's record names the banks it started from, not this call's init_banks
            started = json.loads((ckpt / "trainer_state.json").read_text())["config"].get("init_banks", [])
            bank.meta["train_config"]["init_banks"] = started
            if progress:
                tqdm.write(f"resuming from {ckpt} (step {run.step} of {cfg.steps})")
        out.mkdir(parents=True, exist_ok=True)
        # the log restarts from the checkpoint's history, so a resumed run has no duplicate steps
        atomic_write_json(out / "config.json", bank.meta["train_config"])
        with (out / "log.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in run.history)
        log = (out / "log.jsonl").open("a")
    held_tokens, held_pos = _held_out(task, eval_data, cfg.eval_n, cfg.seed)
    amp = cfg.amp and device.type == "cuda"
    site_idx_all = torch.arange(len(sites), device=device)
    data = train_data.to(device)
    for start in range(0, data.shape[0], 65536):
        _check_trainable(task.train_position_mask(data[start : start + 65536]))
    rows = torch.arange(cfg.batch_size, device=device)
    site_zero = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
    t0, start_step = time.perf_counter(), run.step
    run.call_start = t0

    def trained_s() -> float:  # over all calls of this run
        return run.elapsed_s + time.perf_counter() - run.call_start

    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc="train decoders", unit="step")
    try:
        # a resumed run whose time budget is spent takes no step (like one that reached `steps`)
        spent = bool(cfg.time_limit_s) and run.elapsed_s >= cfg.time_limit_s
        while run.step < cfg.steps and not spent:
            idx = torch.randint(data.shape[0], (cfg.batch_size,), generator=run.data_gen, device=device)
            tokens_d = data[idx]
            pos = sample_positions(task, tokens_d, run.data_gen, cfg.bos_prob, check=False)
            acts = harvest(model, tokens_d, sites, validate=False)
            dec_tokens = bank.to_decoder_tokens(tokens_d)  # the decoders' ids (differ only for GPT-2-like vocabularies)
            record: dict[str, Any] = {"step": run.step + 1}
            losses = []
            with _explain_compile_errors(cfg.compile, device), \
                    torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                if cfg.topology == "per_hook":
                    z_of = {dec: condition(bank, g[0], acts[g[0]][rows.to(acts[g[0]].device), pos.to(acts[g[0]].device)],
                                           cfg, run.data_gen)
                            for dec, g in zip(bank.decoders, bank.groups)}
                    site_of = {dec: g[0] for dec, g in zip(bank.decoders, bank.groups)}
                    for stack in run.stacks:
                        stacked = stack.loss(dec_tokens, torch.stack([z_of[d] for d in stack.decoders]))
                        for dec, loss in zip(stack.decoders, stacked):
                            losses.append(loss)
                            record[f"loss/{site_of[dec]}"] = loss.detach()
                    for dec in run.singles:
                        loss = run.loss_of[dec](dec_tokens, z_of[dec], site_zero)
                        losses.append(loss)
                        record[f"loss/{site_of[dec]}"] = loss.detach()
                else:
                    probs = _site_probs(sites, run.rates, cfg).to(device)
                    choice = torch.multinomial(probs, cfg.batch_size, replacement=True, generator=run.data_gen)
                    d_act = bank.decoders[0].cfg.d_act
                    z = torch.zeros(cfg.batch_size, d_act, device=device)
                    for j, site in enumerate(sites):
                        sel = choice == j
                        a = acts[site]
                        # every row reads site j; only rows assigned to it keep the value (no host sync)
                        z_j = condition(bank, site, a[rows.to(a.device), pos.to(a.device)], cfg, run.data_gen)
                        z = torch.where(sel[:, None], z_j, z)
                    loss = run.loss_of[bank.decoders[0]](dec_tokens, z, site_idx_all[choice])
                    losses.append(loss)
            if cfg.time_limit_s:
                # with a time budget the schedule runs on whichever ends first: steps or time
                done_frac = max(run.step / cfg.steps, trained_s() / cfg.time_limit_s)
                factor = _lr_lambda(cfg)(max(run.step, int(done_frac * cfg.steps)))
                for group in run.opt.param_groups:
                    group["lr"] = cfg.lr * factor
            total = torch.stack(losses).sum()
            run.opt.zero_grad(set_to_none=True)
            with _explain_compile_errors(cfg.compile, device):
                total.backward()
            run.clip(cfg.grad_clip)
            record["lr"] = run.opt.param_groups[0]["lr"]  # the rate this step used
            run.opt.step()
            run.sched.step()
            run.step += 1
            record["loss"] = total.detach() / len(losses)
            out_of_time = bool(cfg.time_limit_s) and trained_s() > cfg.time_limit_s
            last = run.step == cfg.steps or out_of_time
            evaluate_now = (cfg.eval_every and run.step % cfg.eval_every == 0) or last
            if evaluate_now:
                run.push()
                faith = measure_faithfulness(
                    bank, model, task, held_tokens, held_pos, epsilon=cfg.epsilon, metric=cfg.metric, seed=cfg.seed + run.step
                )
                for d in bank.decoders:
                    d.train()
                run.rates = {s: float(r) for s, r in faith["faithfulness"].items()}
                record.update({f"faithfulness/{s}": r for s, r in run.rates.items()})
                record["faithfulness"] = float(np.mean(list(run.rates.values())))
            logged = evaluate_now or run.step % LOG_EVERY == 0 or run.step == 1
            if logged:
                # tensors become floats only here: other steps never wait for the GPU
                record = {k: float(v) if torch.is_tensor(v) else v for k, v in record.items()}
                run.history.append(record)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                faith=f"{np.mean(list(run.rates.values())):.3f}" if run.rates else "-", refresh=False)
            bar.update(1)
            if out is not None and ((cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or last):
                run.save(out / "checkpoints")
            if callback is not None:
                callback(run.step, record)
            if out_of_time:
                if progress:
                    tqdm.write(f"time limit of {cfg.time_limit_s:g} s (over all calls) reached at step {run.step} "
                               f"of {cfg.steps}")
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    run.push()
    bank.meta["faithfulness"] = run.rates
    bank.meta["steps"] = run.step
    bank.eval()
    if out is not None:
        bank.save(out / "bank", dtype=save_dtype)
    hist = pd.DataFrame(run.history)
    faith_df = pd.DataFrame({"faithfulness": run.rates}).rename_axis("site")
    done = run.step - start_step
    return TrainResult(bank, hist, faith_df, seconds, done * cfg.batch_size / seconds if seconds > 0 and done else 0.0,
                       steps_this_call=done)


def _site_probs(sites: Sequence[Site], rates: dict[str, float], cfg: TrainConfig) -> Tensor:
    """Site sampling probabilities: uniform, or ``exp(T (mean_rate - rate))`` when rebalancing."""
    if not cfg.rebalance or not rates:
        return torch.full((len(sites),), 1.0 / len(sites))
    r = torch.tensor([rates.get(str(s), 0.0) for s in sites])
    w = torch.exp(cfg.rebalance_temperature * (r.mean() - r))
    return w / w.sum()
