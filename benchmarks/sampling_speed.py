"""Throughput of preimage sampling + verification (issue 16.1): queries x 1,024 candidates.

Times :func:`tl_inversion.inversion.sampling.sample_checked` (generation of the paper's
schedule, 4 settings x ``--n-repeats`` x 64 candidates per query, verification of every
distinct candidate against the probed model, colour) for ``--n-queries`` counting queries
at one site, after one warm-up call, with CUDA synchronised around each timing. Prints one
table row per configuration: queries, candidates, seconds (best of ``--repeat``), verified
samples per second, and the load average (CPU runs share the machine).

Defaults use the embedded demo (counting model + trained decoders, 2 layers). On a GPU, pass
the paper's counting model folder; without ``--bank`` a random-init bank of d256 decoders for
the 9 paper counting sites is built (throughput only: the samples are noise)::

    python benchmarks/sampling_speed.py --device cuda --n-queries 100 \\
        --model ../shared/models/paper_counting [--bank BANK_DIR]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import time
from pathlib import Path

import torch

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.demo import load_demo
from tl_inversion.inversion.sampling import sample_checked
from tl_inversion.model.activations import site_width
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.model.sites import paper_counting_sites
from tl_inversion.tasks import counting

DEMO_SITE = "blocks.1.attn.hook_result[0]"


def _load(args: argparse.Namespace) -> tuple[object, DecoderBank, str]:
    if args.model is None:
        model, bank = load_demo()
        site = args.site or DEMO_SITE
    else:
        model = load_hf_gpt2(Path(args.model))
        if args.bank is not None:
            bank = DecoderBank.load(Path(args.bank), model)
        else:
            torch.manual_seed(0)
            task = counting.make_task()
            sites = paper_counting_sites(model.cfg.n_layers, model.cfg.n_heads)
            widths = {str(s): site_width(model, s) for s in sites}
            bank = DecoderBank.create(sites, widths, vocab_size=model.cfg.d_vocab, n_ctx=model.cfg.n_ctx,
                                      bos_id=task.bos_id, eos_id=task.eos_id, pad_id=task.pad_id, d_model=256).eval()
        site = args.site or "blocks.1.attn.hook_result[0]"
    return model.to(args.device), bank.to(args.device), site


def _queries(n: int, seed: int = 0) -> list[str]:
    """``n`` well-formed counting texts: 3-10 letters from a 3-letter alphabet, one queried."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        letters = rng.sample(string.ascii_lowercase, 3)
        body = "".join(rng.choice(letters) for _ in range(rng.randint(3, 10)))
        q = rng.choice(body)
        out.append(f"{body}|{q}:{body.count(q)}")
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    """Parse the flags, run the timings and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-queries", type=int, nargs="+", default=[1])
    p.add_argument("--n-repeats", type=int, default=4, help="repeats of the 4-setting schedule (4: 1,024 candidates)")
    p.add_argument("--model", default=None, help="probed model folder (default: the demo)")
    p.add_argument("--bank", default=None, help="decoder bank folder (default: the demo's, or random d256)")
    p.add_argument("--site", default=None)
    p.add_argument("--max-batch", type=int, default=None, help="rows per call (default: all rows at once)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-colour", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the generation step")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per row (best is shown)")
    p.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    p.add_argument("--sort", default="tottime", help="cProfile sort key")
    p.add_argument("--top", type=int, default=25, help="cProfile rows")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, bank, site = _load(args)
    task = counting.make_task()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, site {site}")
    print(f"{'queries':>8} {'candidates':>11} {'seconds':>8} {'cpu_s':>7} {'verified/s':>11} {'load':>6}")
    for n_q in args.n_queries:
        queries = _queries(n_q)
        cand = n_q * 4 * args.n_repeats * 64
        kw = dict(n_repeats=args.n_repeats, colour=not args.no_colour, compile=args.compile, warn_positions=False,
                  max_batch=args.max_batch or max(cand, 1024))
        sample_checked(bank, model, task, queries, site, ":", **kw)  # warm-up
        best, cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            _sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            res = sample_checked(bank, model, task, queries, site, ":", **kw)
            _sync(args.device)
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        assert sum(len(r.df) for r in res) == cand
        print(f"{n_q:>8} {cand:>11} {best:>8.3f} {cpu:>7.2f} {cand / best:>11.0f} {os.getloadavg()[0]:>6.2f}")
        if args.profile:
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            sample_checked(bank, model, task, queries, site, ":", **kw)
            _sync(args.device)
            pr.disable()
            pstats.Stats(pr).sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
