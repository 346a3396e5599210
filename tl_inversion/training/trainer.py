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

Faithfulness (the paper's definition, :func:`~tl_inversion.inversion.verify.measure_faithfulness`)
is measured every ``eval_every`` steps on fixed held-out activations. Runs with an
``out_dir`` are checkpointed atomically (:mod:`.checkpoint`); a killed run resumes from its
last checkpoint to the same result as an uninterrupted one, and Ctrl-C (SIGINT) or SIGTERM
writes a checkpoint of the current step before the run stops.

The configuration lives in :mod:`.config`, the learning-rate schedule in :mod:`.schedule`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.devices import resolve_device
from tl_inversion.errors import ConfigError, InputTypeError, InputValueError, OutputExistsError
from tl_inversion.inversion.verify import measure_faithfulness
from tl_inversion.io import atomic_write_json
from tl_inversion.model import fingerprints
from tl_inversion.model.activations import check_tokens, harvest
from tl_inversion.model.checks import check_model
from tl_inversion.model.sites import Site, validate_sites
from tl_inversion.tasks import as_task
from tl_inversion.tasks.base import CharTask, check_trainable, sample_positions
from tl_inversion.training.checkpoint import (
    RunState,
    check_resumable,
    check_same_task_and_model,
    latest_checkpoint,
    warm_start,
)
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.interrupt import signals_caught
from tl_inversion.training.noise import perturb
from tl_inversion.training.schedule import lr_lambda

__all__ = ["train", "TrainResult", "condition"]

LOG_EVERY = 50  # steps between log records (losses are read from the GPU only then)
_CHECK_CHUNK = 65536  # rows per trainability check of the training set
_PROBE_ROWS = 64  # inputs read once to size the decoders and initialise their site embeddings


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        bank: the trained :class:`~tl_inversion.decoding.bank.DecoderBank` (eval mode).
        history: one row per logged step (``step``, ``loss``, ``loss/<site>``, ``lr``,
            ``elapsed_s``, ``inputs_seen``, and ``faithfulness/<site>`` on evaluation steps).
        faithfulness: the latest rate per site (column ``faithfulness``, index ``site``).
        seconds: wall seconds of this call's training loop.
        samples_per_second: inputs per second of this call (0 when it took no step).
        steps_this_call: optimizer steps taken by this call (0: the run had already finished).
    """

    bank: DecoderBank
    history: pd.DataFrame
    faithfulness: pd.DataFrame
    seconds: float
    samples_per_second: float
    steps_this_call: int = 0


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


def _site_probs(sites: Sequence[Site], rates: dict[str, float], cfg: TrainConfig) -> Tensor:
    """Site sampling probabilities: uniform, or ``exp(T (mean_rate - rate))`` when rebalancing."""
    if not cfg.rebalance or not rates:
        return torch.full((len(sites),), 1.0 / len(sites))
    r = torch.tensor([rates.get(str(s), 0.0) for s in sites])
    w = torch.exp(cfg.rebalance_temperature * (r.mean() - r))
    return w / w.sum()


@contextlib.contextmanager
def _explain_compile_errors(enabled: bool, device: torch.device) -> Iterator[None]:
    """Turn a failure of torch.compile's backend into a one-line ConfigError (field ``compile``)."""
    try:
        yield
    except Exception as e:
        if enabled and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConfigError(
                f"torch.compile failed on {device.type} with torch {torch.__version__} ({type(e).__name__}: {first}); "
                "train without compiling (compile=False): same mathematics, slower steps", field="compile"
            ) from e
        raise


# ---------------------------------------------------------------------------- set-up
def _as_token_ids(task: CharTask, data: Any, name: str) -> Tensor:
    """``data`` as ``[n, n_ctx]`` token ids: a tensor as is, a list of texts encoded by the task."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        return task.encode(list(data))
    raise InputTypeError(
        f"{name} must be an integer tensor [n, n_ctx] of token ids or a list of texts (encoded with the task), "
        f"got {type(data).__name__}"
    )


def _check_data(model: Any, task: CharTask, train_data: Tensor, eval_data: Tensor) -> None:
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


def _new_bank(model: Any, task: CharTask, sites: list[Site], cfg: TrainConfig, probe: Tensor) -> DecoderBank:
    """A freshly initialised bank for ``sites`` with the run's record in ``meta`` and each
    site embedding initialised from the activations of ``probe`` at trainable positions."""
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
    has no duplicate steps); the log is returned open for appending."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", run.bank.meta["train_config"])
    with (out / "log.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in run.history)
    return (out / "log.jsonl").open("a")


def _held_out(task: CharTask, eval_data: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` held-out inputs (a seeded random subset) and one trainable position each."""
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(eval_data.shape[0], generator=g)[:n]
    tokens = eval_data[idx]
    return tokens, sample_positions(task, tokens, g, 0.0)


# ---------------------------------------------------------------------------- the loop
class _Loop:
    """One call's training loop over a :class:`RunState` (one method per part of a step)."""

    def __init__(self, model: Any, task: CharTask, sites: list[Site], run: RunState, data: Tensor,
                 held: tuple[Tensor, Tensor], log: IO[str] | None) -> None:
        self.model, self.task, self.sites, self.run, self.data, self.held, self.log = \
            model, task, sites, run, data, held, log
        self.bank, self.cfg, self.device = run.bank, run.cfg, run.device
        self.amp = self.cfg.amp and self.device.type == "cuda"
        self.rows = torch.arange(self.cfg.batch_size, device=self.device)
        self.site_zero = torch.zeros(self.cfg.batch_size, dtype=torch.long, device=self.device)
        self.site_idx_all = torch.arange(len(sites), device=self.device)

    def losses(self, record: dict[str, Any]) -> list[Tensor]:
        """Draw a batch, read every site in one probed forward and compute each decoder's loss
        (0-dim tensors, also put in ``record`` as ``loss/<site>`` for ``per_hook``)."""
        cfg, run, bank = self.cfg, self.run, self.bank
        idx = torch.randint(self.data.shape[0], (cfg.batch_size,), generator=run.data_gen, device=self.device)
        tokens = self.data[idx]
        pos = sample_positions(self.task, tokens, run.data_gen, cfg.bos_prob, check=False)
        acts = harvest(self.model, tokens, self.sites, validate=False)
        dec_tokens = bank.to_decoder_tokens(tokens)  # the decoders' ids (differ only for GPT-2-like vocabularies)

        def z_at(site: Site) -> Tensor:
            a = acts[site]
            return condition(bank, site, a[self.rows.to(a.device), pos.to(a.device)], cfg, run.data_gen)

        losses = []
        with _explain_compile_errors(cfg.compile, self.device), \
                torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if cfg.topology == "per_hook":
                z_of = {dec: z_at(g[0]) for dec, g in zip(bank.decoders, bank.groups)}
                site_of = {dec: g[0] for dec, g in zip(bank.decoders, bank.groups)}
                for stack in run.stacks:
                    stacked = stack.loss(dec_tokens, torch.stack([z_of[d] for d in stack.decoders]))
                    for dec, loss in zip(stack.decoders, stacked):
                        losses.append(loss)
                        record[f"loss/{site_of[dec]}"] = loss.detach()
                for dec in run.singles:
                    loss = run.loss_of[dec](dec_tokens, z_of[dec], self.site_zero)
                    losses.append(loss)
                    record[f"loss/{site_of[dec]}"] = loss.detach()
            else:
                probs = _site_probs(self.sites, run.rates, cfg).to(self.device)
                choice = torch.multinomial(probs, cfg.batch_size, replacement=True, generator=run.data_gen)
                z = torch.zeros(cfg.batch_size, bank.decoders[0].cfg.d_act, device=self.device)
                for j, site in enumerate(self.sites):
                    # every row reads site j; only rows assigned to it keep the value (no host sync)
                    z = torch.where((choice == j)[:, None], z_at(site), z)
                losses.append(run.loss_of[bank.decoders[0]](dec_tokens, z, self.site_idx_all[choice]))
        return losses

    def follow_time_budget(self) -> None:
        """With a time budget the schedule runs on whichever ends first: steps or time."""
        cfg, run = self.cfg, self.run
        done_frac = max(run.step / cfg.steps, run.trained_s() / cfg.time_limit_s)
        factor = lr_lambda(cfg)(max(run.step, int(done_frac * cfg.steps)))
        for group in run.opt.param_groups:
            group["lr"] = cfg.lr * factor

    def optimise(self, losses: list[Tensor], record: dict[str, Any]) -> None:
        """Backward, clip, AdamW step and schedule step (records the rate the step used)."""
        run = self.run
        total = torch.stack(losses).sum()
        run.opt.zero_grad(set_to_none=True)
        with _explain_compile_errors(self.cfg.compile, self.device):
            total.backward()
        run.clip(self.cfg.grad_clip)
        record["lr"] = run.opt.param_groups[0]["lr"]
        run.opt.step()
        run.sched.step()
        run.step += 1
        record["loss"] = total.detach() / len(losses)

    def evaluate(self, record: dict[str, Any]) -> None:
        """Measure each site's faithfulness rate on the held-out activations (seeded by step)."""
        run, cfg = self.run, self.cfg
        run.push()
        faith = measure_faithfulness(self.bank, self.model, self.task, *self.held, epsilon=cfg.epsilon,
                                     metric=cfg.metric, seed=cfg.seed + run.step)
        run.rates = {s: float(r) for s, r in faith["faithfulness"].items()}
        record.update({f"faithfulness/{s}": r for s, r in run.rates.items()})
        record["faithfulness"] = float(np.mean(list(run.rates.values())))

    def write(self, record: dict[str, Any], bar: tqdm) -> dict[str, Any]:
        """Append a logged record to the history and ``log.jsonl`` (tensors become floats
        only here: other steps never wait for the GPU)."""
        run = self.run
        record["elapsed_s"] = run.trained_s()
        record["inputs_seen"] = run.step * self.cfg.batch_size
        record = {k: float(v) if torch.is_tensor(v) else v for k, v in record.items()}
        run.history.append(record)
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        bar.set_postfix(loss=f"{record['loss']:.3f}",
                        faith=f"{np.mean(list(run.rates.values())):.3f}" if run.rates else "-", refresh=False)
        return record


def _train_steps(loop: _Loop, out: Path | None, progress: bool,
                 callback: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Step until ``cfg.steps`` or the time budget; evaluate, log and checkpoint on the way.

    Raises:
        KeyboardInterrupt: after a SIGINT / SIGTERM (with ``out``: once the current step's
            checkpoint is written).
    """
    cfg, run = loop.cfg, loop.run
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc="train decoders", unit="step")
    try:
        with signals_caught(out is not None) as interrupt:
            # a resumed run whose time budget is spent takes no step (like one that reached `steps`)
            spent = bool(cfg.time_limit_s) and run.elapsed_s >= cfg.time_limit_s
            while run.step < cfg.steps and not spent:
                record: dict[str, Any] = {"step": run.step + 1}
                losses = loop.losses(record)
                if cfg.time_limit_s:
                    loop.follow_time_budget()
                loop.optimise(losses, record)
                out_of_time = bool(cfg.time_limit_s) and run.trained_s() > cfg.time_limit_s
                last = run.step == cfg.steps or out_of_time
                evaluate_now = bool(cfg.eval_every and run.step % cfg.eval_every == 0) or last
                if evaluate_now:
                    loop.evaluate(record)
                if evaluate_now or run.step % LOG_EVERY == 0 or run.step == 1:
                    record = loop.write(record, bar)
                bar.update(1)
                saved = out is not None and ((cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or last)
                if saved:
                    run.save(out / "checkpoints")
                if callback is not None:
                    callback(run.step, record)
                if interrupt.signum is not None:
                    if out is not None and not saved:
                        run.save(out / "checkpoints")
                    tqdm.write(f"{signal.Signals(interrupt.signum).name}: stopped at step {run.step} of {cfg.steps}"
                               + (f"; checkpoint written to {out / 'checkpoints'}" if out is not None else ""))
                    raise KeyboardInterrupt
                if out_of_time:
                    if progress:
                        tqdm.write(f"time limit of {cfg.time_limit_s:g} s (over all calls) reached at step "
                                   f"{run.step} of {cfg.steps}")
                    break
    finally:
        bar.close()
        if loop.log is not None:
            loop.log.close()


def train(
    model: Any,
    task: CharTask | str,
    train_data: Int[Tensor, "n n_ctx"] | Sequence[str],
    eval_data: Int[Tensor, "m n_ctx"] | Sequence[str],
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
        train_data: training inputs: ``[n, n_ctx]`` token ids (BOS first, right-padded), or
            a list of texts (encoded with ``task.encode``).
        eval_data: held-out inputs for the faithfulness rate (same forms).
        cfg: the training configuration.
        out_dir: folder for checkpoints (``checkpoints/``), the log (``log.jsonl``: one JSON
            record per logged step, with ``elapsed_s`` wall seconds of training over all
            calls and ``inputs_seen``) and the final bank (``bank/``); ``None`` keeps
            everything in memory.
        resume: continue from the newest checkpoint in ``out_dir`` when there is one.
        progress: show a tqdm progress bar.
        callback: called as ``callback(step, record)`` after every step (e.g. to stop); on
            steps that are not logged the record's losses are still 0-dim tensors.
        save_dtype: dtype of the final bank's weights on disk (e.g. ``torch.float16``).

    Returns:
        :class:`TrainResult` with the bank (fingerprint, task and config recorded), the
        loss/faithfulness history and throughput (inputs per second).

    Raises:
        InputTypeError: ``model`` is not a loaded TransformerLens model (e.g. a model name),
            ``cfg`` is not a :class:`TrainConfig`, data neither a tensor nor a list of texts.
        SiteError: a site does not exist on the model.
        InputValueError: data of the wrong width or token ids, a checkpoint of another task
            or model; ConfigError: a checkpoint of another config, a bad warm start.
        OutputExistsError: (a ``FileExistsError``) ``out_dir`` holds checkpoints and ``resume`` is False.
        KeyboardInterrupt: SIGINT or SIGTERM arrived (with ``out_dir`` the current step's
            checkpoint is written first, and a later call resumes from it).

    Source: InversionView Sec. 3 and App. C (objective, BOS baseline, faithfulness rate,
    rebalancing).
    """
    check_model(model)
    if not isinstance(cfg, TrainConfig):
        raise InputTypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    task = as_task(task)
    train_data = _as_token_ids(task, train_data, "train_data")
    eval_data = _as_token_ids(task, eval_data, "eval_data")
    device = resolve_device(cfg.device)
    sites = validate_sites(cfg.sites, model)
    _check_data(model, task, train_data, eval_data)
    torch.manual_seed(cfg.seed)
    bank = _new_bank(model, task, sites, cfg, train_data[:_PROBE_ROWS])
    out = Path(out_dir) if out_dir is not None else None
    ckpt = _checkpoint_to_resume(out, resume)
    if cfg.init_banks and ckpt is None:  # a resumed run continues from its checkpoint instead
        warm_start(bank, cfg.init_banks, model, task, out)
    bank.to(device)
    for d in bank.decoders:
        d.train()
    run = RunState(bank, cfg, device)
    if ckpt is not None:
        check_resumable(ckpt, cfg)
        check_same_task_and_model(ckpt, bank)
        run.load(ckpt)
        if progress:
            tqdm.write(f"resuming from {ckpt} (step {run.step} of {cfg.steps})")
    log = _open_log(out, run) if out is not None else None
    held = _held_out(task, eval_data, cfg.eval_n, cfg.seed)
    data = train_data.to(device)
    for start in range(0, data.shape[0], _CHECK_CHUNK):
        check_trainable(task.train_position_mask(data[start : start + _CHECK_CHUNK]))
    t0, start_step = time.perf_counter(), run.step
    run.call_start = t0
    _train_steps(_Loop(model, task, sites, run, data, held, log), out, progress, callback)
    seconds = time.perf_counter() - t0
    run.push()
    bank.meta["faithfulness"] = run.rates
    bank.meta["steps"] = run.step
    bank.eval()
    if out is not None:
        bank.save(out / "bank", dtype=save_dtype)
    done = run.step - start_step
    return TrainResult(bank, pd.DataFrame(run.history), pd.DataFrame({"faithfulness": run.rates}).rename_axis("site"),
                       seconds, done * cfg.batch_size / seconds if seconds > 0 and done else 0.0,
                       steps_this_call=done)
