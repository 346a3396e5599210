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

Under ``torchrun`` the same call trains data-parallel (:mod:`.distributed`): ``batch_size``
stays the global batch, each rank computes on its slice, gradients are averaged, and rank 0
alone logs, evaluates, checkpoints and saves. The configuration lives in :mod:`.config`,
the learning-rate schedule in :mod:`.schedule`, the run's set-up in :mod:`.setup`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.devices import resolve_device
from tl_inversion.errors import ConfigError, InputTypeError
from tl_inversion.inversion.verify import measure_faithfulness
from tl_inversion.model.activations import harvest
from tl_inversion.model.checks import check_model
from tl_inversion.model.sites import Site, validate_sites
from tl_inversion.tasks import as_task
from tl_inversion.tasks.base import check_trainable, sample_positions
from tl_inversion.tasks.protocol import Task
from tl_inversion.training.checkpoint import RunState, check_resumable, check_same_task_and_model, warm_start
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.distributed import Distributed
from tl_inversion.training.interrupt import signals_caught
from tl_inversion.training.noise import perturb
from tl_inversion.training.schedule import lr_lambda
from tl_inversion.training.setup import (
    _as_token_ids,
    _check_data,
    _checkpoint_to_resume,
    _held_out,
    _new_bank,
    _open_log,
)

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
        bank: the bank being trained.
        site: the site of ``z``.
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


# ---------------------------------------------------------------------------- the loop
class _Loop:
    """One call's training loop over a :class:`RunState` (one method per part of a step).

    Under ``torchrun`` (``ddp.world > 1``) every rank draws the whole global batch (indices,
    positions, noise, sites) from the shared generator and computes on its own rows
    ``ddp.rows(batch_size)`` only; see :mod:`.distributed`.
    """

    def __init__(self, model: Any, task: Task, sites: list[Site], run: RunState, data: Tensor,
                 held: tuple[Tensor, Tensor], log: IO[str] | None, ddp: Distributed | None = None) -> None:
        self.model, self.task, self.sites, self.run, self.data, self.held, self.log = \
            model, task, sites, run, data, held, log
        self.bank, self.cfg, self.device = run.bank, run.cfg, run.device
        self.ddp = ddp or Distributed()
        self.mine = self.ddp.rows(self.cfg.batch_size)
        local = self.mine.stop - self.mine.start
        self.amp = self.cfg.amp and self.device.type == "cuda"
        self.rows = torch.arange(local, device=self.device)
        self.site_zero = torch.zeros(local, dtype=torch.long, device=self.device)
        self.site_idx_all = torch.arange(len(sites), device=self.device)
        self.pad_id = self.bank.decoders[0].cfg.pad_id

    def _share(self, dec_tokens: Tensor) -> Tensor | None:
        """``world * n_mine / n_all`` (n: non-PAD targets of the global batch and of this rank's
        rows): weighting each rank's mean loss by it makes the rank-averaged gradient the
        gradient of the one-process mean loss. ``None`` in a one-process run.
        """
        if not self.ddp.enabled:
            return None
        counted = (dec_tokens[:, 1:] != self.pad_id).float().sum(dim=1)
        return counted[self.mine].sum() * self.ddp.world / counted.sum()

    def _z_at(self, acts: dict[Site, Tensor], site: Site, pos: Tensor) -> Tensor:
        """The condition of ``site`` for this rank's rows (noise drawn for the global batch)."""
        cfg, run, bank = self.cfg, self.run, self.bank
        a = acts[site]
        z = a[self.rows.to(a.device), pos.to(a.device)]
        if not self.ddp.enabled or cfg.train_noise == 0:  # no noise: condition() draws nothing
            return condition(bank, site, z, cfg, run.data_gen)
        full = z.new_ones((cfg.batch_size, z.shape[-1]))  # other ranks' rows: placeholders, never used
        full[self.mine] = z
        return condition(bank, site, full, cfg, run.data_gen)[self.mine]

    def losses(self, record: dict[str, Any]) -> list[Tensor]:
        """Draw a batch, read every site in one probed forward and compute each decoder's loss
        (0-dim tensors, also put in ``record`` as ``loss/<site>`` for ``per_hook``).
        """
        cfg, run, bank, mine = self.cfg, self.run, self.bank, self.mine
        idx = torch.randint(self.data.shape[0], (cfg.batch_size,), generator=run.data_gen, device=self.device)
        tokens = self.data[idx]
        pos = sample_positions(self.task, tokens, run.data_gen, cfg.bos_prob, check=False)[mine]
        dec_tokens = bank.to_decoder_tokens(tokens)  # the decoders' ids (differ only for GPT-2-like vocabularies)
        share = self._share(dec_tokens)
        tokens, dec_tokens = tokens[mine], dec_tokens[mine]
        acts = harvest(self.model, tokens, self.sites, validate=False)
        per_rank = float(self.ddp.world)

        def keep(loss: Tensor, name: Any) -> None:
            if share is not None:
                loss = loss * share
            losses.append(loss)
            if name is not None:  # summed over ranks when logged: the global batch's mean
                record[f"loss/{name}"] = loss.detach() / per_rank if share is not None else loss.detach()

        losses: list[Tensor] = []
        with _explain_compile_errors(cfg.compile, self.device), \
                torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if cfg.topology == "per_hook":
                z_of = {dec: self._z_at(acts, g[0], pos) for dec, g in zip(bank.decoders, bank.groups, strict=True)}
                site_of = {dec: g[0] for dec, g in zip(bank.decoders, bank.groups, strict=True)}
                for stack in run.stacks:
                    stacked = stack.loss(dec_tokens, torch.stack([z_of[d] for d in stack.decoders]))
                    for dec, loss in zip(stack.decoders, stacked, strict=True):
                        keep(loss, site_of[dec])
                for dec in run.singles:
                    keep(run.loss_of[dec](dec_tokens, z_of[dec], self.site_zero), site_of[dec])
            else:
                probs = _site_probs(self.sites, run.rates, cfg).to(self.device)
                choice = torch.multinomial(probs, cfg.batch_size, replacement=True, generator=run.data_gen)[mine]
                z = torch.zeros(choice.shape[0], bank.decoders[0].cfg.d_act, device=self.device)
                for j, site in enumerate(self.sites):
                    # every row reads site j; only rows assigned to it keep the value (no host sync)
                    z = torch.where((choice == j)[:, None], self._z_at(acts, site, pos), z)
                keep(run.loss_of[bank.decoders[0]](dec_tokens, z, self.site_idx_all[choice]), None)
        return losses

    def clock(self) -> float:
        """Training seconds over all calls; under torchrun the slowest rank's (all ranks agree)."""
        return self.ddp.max(self.run.trained_s())

    def follow_time_budget(self) -> None:
        """With a time budget the schedule runs on whichever ends first: steps or time."""
        cfg, run = self.cfg, self.run
        done_frac = max(run.step / cfg.steps, self.clock() / cfg.time_limit_s)
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
        self.ddp.average_gradients(p for g in run.opt.param_groups for p in g["params"])
        run.clip(self.cfg.grad_clip)
        record["lr"] = run.opt.param_groups[0]["lr"]
        run.opt.step()
        run.sched.step()
        run.step += 1
        record["loss"] = total.detach() / (len(losses) * self.ddp.world)

    def evaluate(self, record: dict[str, Any]) -> None:
        """Measure each site's faithfulness rate on the held-out activations (seeded by step);
        under torchrun rank 0 measures and sends the rates to the others (rebalancing uses them).
        """
        run, cfg = self.run, self.cfg
        run.push()
        rates = None
        if self.ddp.is_main:
            faith = measure_faithfulness(self.bank, self.model, self.task, *self.held, epsilon=cfg.epsilon,
                                         metric=cfg.metric, seed=cfg.seed + run.step)
            rates = {s: float(r) for s, r in faith["faithfulness"].items()}
        run.rates = self.ddp.broadcast_object(rates)
        record.update({f"faithfulness/{s}": r for s, r in run.rates.items()})
        record["faithfulness"] = float(np.mean(list(run.rates.values())))

    def write(self, record: dict[str, Any], bar: tqdm) -> dict[str, Any]:
        """Append a logged record to the history and ``log.jsonl`` (tensors become floats
        only here: other steps never wait for the GPU).
        """
        run = self.run
        if self.ddp.enabled:  # each rank holds its share of the global mean losses
            keys = [k for k in record if k == "loss" or k.startswith("loss/")]
            summed = self.ddp.all_reduce_sum(torch.stack([record[k].float() for k in keys]))
            record.update(zip(keys, summed, strict=True))
        record["elapsed_s"] = self.clock()
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
    cfg, run, main = loop.cfg, loop.run, loop.ddp.is_main
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
                out_of_time = bool(cfg.time_limit_s) and loop.clock() > cfg.time_limit_s
                last = run.step == cfg.steps or out_of_time
                evaluate_now = bool(cfg.eval_every and run.step % cfg.eval_every == 0) or last
                if evaluate_now:
                    loop.evaluate(record)
                if evaluate_now or run.step % LOG_EVERY == 0 or run.step == 1:
                    record = loop.write(record, bar)
                bar.update(1)
                saved = out is not None and ((cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or last)
                if saved and main:
                    run.save(out / "checkpoints")
                if callback is not None:
                    callback(run.step, record)
                # under torchrun every rank stops at the step where any rank got the signal
                if loop.ddp.any(interrupt.signum is not None) if out is not None else interrupt.signum is not None:
                    if out is not None and not saved and main:
                        run.save(out / "checkpoints")
                    name = signal.Signals(interrupt.signum).name if interrupt.signum is not None else "a signal"
                    if main:
                        tqdm.write(f"{name}: stopped at step {run.step} of {cfg.steps}"
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
    task: Task | str,
    train_data: Any,  # [n, n_ctx] token ids or a list of texts; checked here with a clear message
    eval_data: Any,  # likewise
    cfg: Any,  # a TrainConfig; checked here with a clear message
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
        task: the task (any object with the members of
            :class:`~tl_inversion.tasks.protocol.Task`: a built-in task, a
            :class:`~tl_inversion.tasks.custom.TextTask`...) or its registered name
            (vocabulary, special tokens, trainable positions).
        train_data: training inputs: a ``[n, n_ctx]`` integer tensor of token ids (BOS
            first, right-padded), or a list of texts (encoded with ``task.encode``).
        eval_data: held-out inputs for the faithfulness rate (same forms).
        cfg: the training configuration, a :class:`TrainConfig`.
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

    Data-parallel: started by ``torchrun --nproc_per_node=N`` (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK`` set), the call joins (or starts: gloo on CPU, NCCL on CUDA) the process
    group, trains on ``cuda:LOCAL_RANK`` when ``cfg.device`` is auto/cuda (moving ``model``
    there), draws the same global batch as a one-process run and computes on its
    ``batch_size / N`` rows; the result equals the one-process run's up to summation order.
    A checkpoint resumes under any world size. ``batch_size`` not divisible by N raises
    ConfigError (``field="batch_size"``). Every rank returns the trained bank.

    Source: InversionView Sec. 3 and App. C (objective, BOS baseline, faithfulness rate,
    rebalancing); data parallelism is this project's (issue 16.4).
    """
    check_model(model)
    if not isinstance(cfg, TrainConfig):
        raise InputTypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    task = as_task(task)
    train_data = _as_token_ids(task, train_data, "train_data")
    eval_data = _as_token_ids(task, eval_data, "eval_data")
    ddp = Distributed.from_env(resolve_device(cfg.device))
    try:
        out = Path(out_dir) if out_dir is not None else None
        result = _train(model, task, train_data, eval_data, cfg, ddp, out=out,
                        resume=resume, progress=progress, callback=callback, save_dtype=save_dtype)
    except BaseException:
        ddp.close(wait=False)
        raise
    ddp.close()  # every rank returns once rank 0 has saved the bank
    return result


def _on_device(model: Any, device: torch.device, ddp: Distributed) -> None:
    """Under torchrun on GPUs, move a probed model that sits on another GPU to this rank's."""
    if not ddp.enabled or device.type != "cuda":
        return
    param = next(iter(model.parameters()), None)
    if param is not None and param.device != device:
        model.to(device)


def _train(model: Any, task: Task, train_data: Tensor, eval_data: Tensor, cfg: TrainConfig, ddp: Distributed, *,
           out: Path | None, resume: bool, progress: bool, callback: Callable[[int, dict[str, Any]], None] | None,
           save_dtype: torch.dtype | None) -> TrainResult:
    """:func:`train` after its argument checks, as rank ``ddp.rank`` of ``ddp.world``."""
    device = ddp.device(resolve_device(cfg.device))
    ddp.rows(cfg.batch_size)  # refuse a global batch the ranks cannot split evenly, before any work
    progress = progress and ddp.is_main
    _on_device(model, device, ddp)
    sites = validate_sites(cfg.sites, model)
    _check_data(model, task, train_data, eval_data)
    torch.manual_seed(cfg.seed)
    bank = _new_bank(model, task, sites, cfg, train_data[:_PROBE_ROWS])
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
        run.load(ckpt)  # any world size: the data drawn does not depend on it (see .distributed)
        if progress:
            tqdm.write(f"resuming from {ckpt} (step {run.step} of {cfg.steps})")
    ddp.broadcast_params(p for g in run.opt.param_groups for p in g["params"])  # same start on every rank
    log = _open_log(out, run) if out is not None and ddp.is_main else None
    held = _held_out(task, eval_data, cfg.eval_n, cfg.seed)
    data = train_data.to(device)
    for start in range(0, data.shape[0], _CHECK_CHUNK):
        check_trainable(task.train_position_mask(data[start : start + _CHECK_CHUNK]))
    t0, start_step = time.perf_counter(), run.step
    run.call_start = t0
    _train_steps(_Loop(model, task, sites, run, data, held, log, ddp), out, progress, callback)
    seconds = time.perf_counter() - t0
    run.push()
    bank.meta["faithfulness"] = run.rates
    bank.meta["steps"] = run.step
    bank.eval()
    if out is not None and ddp.is_main:
        bank.save(out / "bank", dtype=save_dtype)
    done = run.step - start_step
    return TrainResult(bank, pd.DataFrame(run.history), pd.DataFrame({"faithfulness": run.rates}).rename_axis("site"),
                       seconds, done * cfg.batch_size / seconds if seconds > 0 and done else 0.0,
                       steps_this_call=done)
