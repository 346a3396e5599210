"""Time to quality: this project's training recipe against the paper's, on the same clock.

Trains decoders for the paper's 9 counting sites of a probed counting model with each
recipe for ``--seconds`` of wall time (compilation and evaluations included: they are part
of what a user waits for), measuring the mean faithfulness rate about every
``--eval-every-s`` seconds, and prints:

* faithfulness against wall time for both recipes in one table;
* when each recipe first reaches mean faithfulness 0.9 (``--target``);
* when the project recipe reaches the paper recipe's final quality, and the speed-up
  factor (the paper recipe's seconds over the project recipe's);
* inputs per second and the model FLOP utilisation against ``--peak-tflops``: decoder
  training counted as 6 x parameters x tokens (forward and backward) plus the probed
  model's forward 2 x parameters x tokens, tokens = inputs x n_ctx (padding included).

Recipes (:data:`tl_inversion.training.config.PRESETS`): ``project`` (per-hook, stacked,
compiled, batch 1,024, lr 2e-3, cosine) and ``paper`` (one shared decoder, batch 256,
lr 1e-4 constant, rebalancing). Each recipe's run goes to ``--out/<recipe>`` (its
``log.jsonl``); the table is built from whatever recipes that folder holds, so the two may
run in separate calls (``--recipe project``, then ``--recipe paper``, then ``--report``).

    # a run longer than one 10-minute command: stop each call with a checkpoint, then resume
    python benchmarks/time_to_quality.py --model ../shared/models/paper_counting --device cuda \
        --recipe project --seconds 600 --call-seconds 300 --out runs/ttq          # then again with --resume
    # one H200, each call under 10 minutes:
    python benchmarks/time_to_quality.py --model ../shared/models/paper_counting --device cuda \\
        --recipe project --seconds 240 --out runs/ttq
    python benchmarks/time_to_quality.py --model ../shared/models/paper_counting --device cuda \\
        --recipe paper --seconds 240 --out runs/ttq
    python benchmarks/time_to_quality.py --out runs/ttq --report --peak-tflops 790
    # where the time goes (torch.profiler over a few steps of each recipe):
    python benchmarks/time_to_quality.py --model ../shared/models/paper_counting --device cuda --profile
    # CPU smoke run:
    python benchmarks/time_to_quality.py --model ../shared/models/paper_counting --device cpu --seconds 20 \\
        --eval-every-s 10 --eval-n 20 --d-model 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.model.sites import paper_counting_sites
from tl_inversion.tasks import counting
from tl_inversion.training.config import PRESETS, TrainConfig, preset_config
from tl_inversion.training.trainer import train

RECIPES = ("project", "paper")
_NEVER = 10**9  # an eval_every that never comes


def _config(recipe: str, sites: list[str], args: argparse.Namespace, steps: int, seconds: float) -> TrainConfig:
    over: dict[str, Any] = {"steps": steps, "time_limit_s": seconds, "eval_every": _NEVER, "eval_n": args.eval_n,
                            "checkpoint_every": 0, "device": args.device, "seed": args.seed}
    if args.d_model:
        over["decoder"] = {**TrainConfig.defaults()["decoder"], "d_model": args.d_model}
    if args.no_compile:
        over["compile"] = False
    if args.batch_size:
        over["batch_size"] = args.batch_size
    if args.lr:
        over["lr"] = args.lr
    return preset_config(recipe, sites, **over)


class _EveryFewSeconds:
    """A train() callback that asks for an evaluation at the first step after each mark of
    ``period`` wall seconds (it sets ``cfg.eval_every`` to that step; a resumable field), and,
    with ``stop_after`` > 0, stops this call after that many seconds the way Ctrl-C does
    (SIGINT: train() writes a checkpoint, then raises KeyboardInterrupt), so that a run longer
    than one command may last goes on with ``--resume`` in the next."""

    def __init__(self, cfg: TrainConfig, period: float, stop_after: float = 0.0) -> None:
        self.cfg, self.period, self.t0, self.next = cfg, period, time.perf_counter(), period
        self.stop_after, self.stopping = stop_after, False

    def __call__(self, step: int, record: dict[str, Any]) -> None:
        now = time.perf_counter() - self.t0
        if now >= self.next:
            self.cfg.eval_every = step + 1
            self.next += self.period
        else:
            self.cfg.eval_every = _NEVER
        if self.stop_after and now >= self.stop_after and not self.stopping:
            self.stopping = True
            os.kill(os.getpid(), signal.SIGINT)


def _flops_per_input(model: Any, cfg: TrainConfig, bank: Any, n_ctx: int) -> float:
    """Training FLOPs per input: 6 x decoder parameters x tokens + 2 x probed parameters x tokens."""
    dec = sum(p.numel() for d in bank.decoders for p in d.parameters())
    probed = sum(p.numel() for p in model.parameters())
    return 6.0 * dec * n_ctx + 2.0 * probed * n_ctx


def run_recipe(recipe: str, model: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Train ``recipe`` for ``args.seconds`` into ``args.out/recipe``; return its summary.

    With ``--call-seconds``, this call stops after that many seconds with a checkpoint and
    returns None; ``--resume`` continues it (the time budget and the learning-rate schedule
    count over all calls).
    """
    sites = [str(s) for s in paper_counting_sites(model.cfg.n_layers, model.cfg.n_heads)]
    cfg = _config(recipe, sites, args, steps=_NEVER, seconds=args.seconds)
    out = Path(args.out) / f"{recipe}{args.tag}"
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    try:
        res = train(model, "counting", counting.paper_split("train"), counting.paper_split("test"), cfg,
                    out_dir=out, resume=args.resume, progress=False,
                    callback=_EveryFewSeconds(cfg, args.eval_every_s, args.call_seconds))
    except KeyboardInterrupt:
        print(f"{recipe}{args.tag}: stopped after --call-seconds {args.call_seconds:g} with a checkpoint in {out}; "
              "run the same command with --resume to go on")
        return None
    hist = res.history
    last = hist.iloc[-1]
    summary = {"recipe": f"{recipe}{args.tag}", "lr": cfg.lr, "steps": int(last["step"]),
               "seconds": float(last["elapsed_s"]),
               "inputs_seen": int(last["inputs_seen"]), "batch_size": cfg.batch_size,
               "flops_per_input": _flops_per_input(model, cfg, res.bank, int(model.cfg.n_ctx)),
               "decoder_params": sum(p.numel() for d in res.bank.decoders for p in d.parameters()),
               "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _curve(folder: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    hist = pd.DataFrame(rows)
    return hist.dropna(subset=["faithfulness"])[["step", "elapsed_s", "inputs_seen", "faithfulness"]]


def _first_time(curve: pd.DataFrame, level: float) -> float:
    hit = curve[curve["faithfulness"] >= level - 1e-12]
    return float(hit["elapsed_s"].iloc[0]) if len(hit) else math.nan


def report(out: Path, target: float, peak_tflops: float) -> None:
    """Print the table of faithfulness against wall time and the time-to-quality summary."""
    found = sorted(f.parent.name for f in out.glob("*/summary.json"))
    if not found:
        print(f"no recipe results under {out}")
        return
    curves = {r: _curve(out / r) for r in found}
    summaries = {r: json.loads((out / r / "summary.json").read_text()) for r in found}
    table = pd.concat([c.assign(recipe=r) for r, c in curves.items()]).sort_values("elapsed_s")
    print("\nmean faithfulness against wall time (seconds since training began, compile and evaluations included)")
    print(table[["recipe", "elapsed_s", "step", "inputs_seen", "faithfulness"]].round(3).to_string(index=False))
    print()
    lines = []
    for r in found:
        s, c = summaries[r], curves[r]
        rate = s["inputs_seen"] / s["seconds"]
        tflops = rate * s["flops_per_input"] / 1e12
        lines.append({"recipe": r, "device": s["device"], "batch": s["batch_size"], "lr": s.get("lr"),
                      "steps": s["steps"], "seconds": round(s["seconds"], 1),
                      "inputs/s": round(rate), "final faith": round(float(c["faithfulness"].iloc[-1]), 3),
                      f"s to {target:g}": round(_first_time(c, target), 1), "TFLOP/s": round(tflops, 3),
                      "MFU %": round(100 * tflops / peak_tflops, 3)})
    print(pd.DataFrame(lines).to_string(index=False))
    if "paper" in found:
        paper_final = float(curves["paper"]["faithfulness"].iloc[-1])
        t_paper = float(curves["paper"]["elapsed_s"].iloc[-1])
        for r in found:
            if r == "paper":
                continue
            t_proj = _first_time(curves[r], paper_final)
            print(f"\nthe paper recipe's final quality {paper_final:.3f} (after {t_paper:.0f} s): {r} "
                  + (f"reaches it after {t_proj:.1f} s, a speed-up of {t_paper / t_proj:.1f}x" if t_proj == t_proj
                     else "does not reach it"))
    print(f"(MFU against a peak of {peak_tflops:g} TFLOP/s; FLOPs = 6 x decoder params x tokens + 2 x probed params "
          "x tokens, tokens = inputs x n_ctx)")


def profile(model: Any, args: argparse.Namespace) -> None:
    """Print the top operations by time over a few steps of each recipe (torch.profiler)."""
    from torch.profiler import ProfilerActivity, schedule

    sites = [str(s) for s in paper_counting_sites(model.cfg.n_layers, model.cfg.n_heads)]
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for recipe in args.recipes:
        cfg = _config(recipe, sites, args, steps=args.profile_warmup + args.profile_steps + 1, seconds=0.0)
        cfg.eval_every = 0  # the evaluation at the end falls outside the profiled steps
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        tables: list[str] = []  # filled when the one active cycle ends (later cycles would clear its events)
        with torch.profiler.profile(
                activities=activities,
                schedule=schedule(wait=0, warmup=args.profile_warmup, active=args.profile_steps, repeat=1),
                on_trace_ready=lambda p: tables.append(p.key_averages().table(sort_by=key,
                                                                              row_limit=args.profile_top))) as prof:
            train(model, "counting", counting.paper_split("train"), counting.paper_split("test"), cfg,
                  progress=False, callback=lambda step, record: prof.step())
        print(f"\n== {recipe}: top operations over {args.profile_steps} steps (after {args.profile_warmup} "
              f"warm-up steps), sorted by {key}")
        print(tables[0] if tables else "(no complete profiling cycle: raise --profile-steps' run length)")


def main() -> None:
    """Parse the command line; run, report or profile."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="../shared/models/paper_counting", help="probed counting model folder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--recipe", choices=[*RECIPES, "both"], default="both")
    ap.add_argument("--seconds", type=float, default=240.0, help="wall seconds of training per recipe")
    ap.add_argument("--eval-every-s", type=float, default=20.0, help="seconds between faithfulness measurements")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out activations per site (paper 200)")
    ap.add_argument("--target", type=float, default=0.9, help="the mean faithfulness whose first time is reported")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="peak TFLOP/s for the MFU (H200 bf16: 790)")
    ap.add_argument("--d-model", type=int, default=0, help="decoder width (0: the presets' 256)")
    ap.add_argument("--no-compile", action="store_true", help="train the project recipe without torch.compile")
    ap.add_argument("--batch-size", type=int, default=0, help="override the recipe's batch size (0: the preset's)")
    ap.add_argument("--lr", type=float, default=0.0, help="override the recipe's peak learning rate (0: the preset's)")
    ap.add_argument("--tag", default="", help="suffix of the run's folder (e.g. -b4096): variants side by side")
    ap.add_argument("--call-seconds", type=float, default=0.0,
                    help="stop this call after so many seconds with a checkpoint (0: run to --seconds)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/time_to_quality", help="one sub-folder per recipe")
    ap.add_argument("--report", action="store_true", help="only print the table of the results under --out")
    ap.add_argument("--profile", action="store_true", help="profile a few steps of each recipe instead")
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--profile-warmup", type=int, default=5)
    ap.add_argument("--profile-top", type=int, default=20)
    args = ap.parse_args()
    args.recipes = list(RECIPES) if args.recipe == "both" else [args.recipe]
    assert set(RECIPES) <= set(PRESETS)
    if not args.report:
        model = load_hf_gpt2(args.model, device=args.device)
        if args.profile:
            profile(model, args)
            return
        for recipe in args.recipes:
            run_recipe(recipe, model, args)
    report(Path(args.out), args.target, args.peak_tflops)


if __name__ == "__main__":
    main()
