"""Training throughput (inputs/s) and sampling throughput (verified samples/s).

Runs on the embedded counting demo model (no files needed) or on a model folder:

    python benchmarks/throughput.py                       # CPU, embedded model
    python benchmarks/throughput.py --device cuda --model ../shared/models/paper_counting

Training: ``--steps`` steps of ``--batch-size`` inputs, every decoder of the bank trained on
each input (per-hook topology), evaluation off. Sampling: the paper's schedule (4 settings
x 64 samples x ``--n-repeats``) for ``--n-queries`` queries, each sample re-run through the
probed model and scored; the figure counts verified samples per second of wall time.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from tl_inversion.demo import asset_dir
from tl_inversion.inversion.sampling import sample_many
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.tasks import counting
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="HF GPT-2 folder (default: the embedded demo model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sites", nargs="+", default=["blocks.0.attn.hook_result[0]",
                                                   "blocks.1.attn.hook_result[0]", "blocks.1.hook_resid_post"])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-queries", type=int, default=4)
    ap.add_argument("--n-repeats", type=int, default=1)
    args = ap.parse_args()

    folder = args.model or asset_dir() / "probed"
    model = load_hf_gpt2(folder, device=args.device)
    task = counting.make_task()
    tr, te = counting.paper_split("train"), counting.paper_split("test")
    cfg = TrainConfig(sites=args.sites, steps=args.steps, batch_size=args.batch_size, eval_every=0, eval_n=16,
                      checkpoint_every=0, device=args.device,
                      decoder={"d_model": args.d_model, "n_layers": 2, "n_heads": 4})
    # warm-up (allocator, kernels), then the timed run
    train(model, task, tr, te, TrainConfig(**{**cfg.to_dict(), "steps": 2}), progress=False)
    t0 = time.perf_counter()
    result = train(model, task, tr, te, cfg, progress=False)
    train_s = time.perf_counter() - t0
    bank = result.bank
    queries = te[: args.n_queries]
    rows = [{"what": "training", "device": args.device,
             "config": f"{len(args.sites)} sites per_hook d{args.d_model} bs{args.batch_size}",
             "throughput": args.steps * args.batch_size / train_s, "unit": "inputs/s (each to every decoder)"}]
    for site in args.sites[:2]:
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = sample_many(bank, model, task, queries, site, ":", n_repeats=args.n_repeats, seed=0)
        if args.device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = sum(len(r.df) for r in res)
        rows.append({"what": f"sampling {site}", "device": args.device,
                     "config": f"{len(res)} queries x {n // len(res)} samples",
                     "throughput": n / dt, "unit": "verified samples/s"})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:,.0f}"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, model {folder}")


if __name__ == "__main__":
    main()
