"""Reproduce the InversionView counting patching tables (Huang et al. 2024, Sec. 4.1).

On the paper's counting model and its test split without |S| = 3 and |S| = 27, for the
random contrast (another test example with a different answer) and the flip contrast (one
character of S changed so that the count changes), this measures LD_clean, the forward and
backward cumulative effects and the single-group effects, and prints them next to the
paper's numbers (``../shared/models/paper_counting/README.md``).

Usage::

    python benchmarks/patching_counting.py                 # the whole filtered split
    python benchmarks/patching_counting.py --n 20000       # a random subset
    python benchmarks/patching_counting.py --device cuda --batch-size 8192

Numbers depend on the random contrasts: expect agreement within a few tenths.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tl_inversion.model.loading import load_hf_gpt2  # noqa: E402
from tl_inversion.patching import counting_flip_contrasts, counting_random_contrasts, cumulative_patching, patch_nodes  # noqa: E402  # noqa: E402
from tl_inversion.tasks.counting import paper_split  # noqa: E402

#: The paper's forward order; labels as in the model's README.
ORDER = {"e_pos": "e_pos@tc,:", "(a0@tc, e_tok)": "a0@tc + e_tok@tc", "a0@:": "a0@:", "a1@:": "a1@:"}
EXTRA = {"a0@tc": "a0@tc"}

#: (contrast, direction, step or group) -> the paper's number (README of the checkpoint).
PAPER = {
    "random": {
        "LD_clean": 22.12,
        "forward": [15.13, 37.22, 41.18, 44.25],
        "backward": [37.94, 42.94, 42.94, 44.25],
        "single": {"a1@:": 37.94, "a0@tc": 22.08, "e_pos": 15.13, "(a0@tc, e_tok)": 26.79, "a0@:": 6.09},
    },
    "flip": {
        "LD_clean": 18.22,
        "forward": [0.00, 34.52, 34.55, 35.53],
        "backward": [35.43, 35.54, 35.53, 35.53],
        "single": {"a1@:": 35.43, "a0@:": 0.149},
    },
}


def default_model_dir() -> Path:
    env = os.environ.get("TL_INVERSION_PAPER_COUNTING")
    return Path(env) if env else REPO.parent / "shared" / "models" / "paper_counting"


def build_contrasts(kind: str, tokens: torch.Tensor, seed: int):
    if kind == "random":
        return counting_random_contrasts(tokens, generator=seed)  # pool: the whole test split
    return counting_flip_contrasts(tokens, generator=seed)


def measure(model, cs, *, batch_size: int, n_boot: int, progress: bool) -> pd.DataFrame:
    """The cumulative tables and the single groups of one contrast, in one pass."""
    return cumulative_patching(
        model, ORDER, cs, singles=True, extra=EXTRA, trim_padding=True, batch_size=batch_size,
        n_boot=n_boot, progress=progress,
    )


def compare(kind: str, df: pd.DataFrame) -> pd.DataFrame:
    """Rows of (quantity, paper, ours, CI, difference)."""
    paper = PAPER[kind]
    rows = [{"contrast": kind, "quantity": "LD_clean", "paper": paper["LD_clean"], "ours": df["LD_clean"].iloc[0],
             "ci_low": float("nan"), "ci_high": float("nan")}]
    for d in ("forward", "backward"):
        sub = df[df.direction == d].sort_values("step")
        for (_, r), p in zip(sub.iterrows(), paper[d]):
            what = r["added"] if r["step"] == 1 else f"+ {r['added']}"
            rows.append({"contrast": kind, "quantity": f"{d} {r['step']}: {what}", "paper": p, "ours": r["effect"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    singles = df[df.direction == "single"].set_index("added")
    for name, p in paper["single"].items():
        r = singles.loc[name]
        rows.append({"contrast": kind, "quantity": f"{name} alone", "paper": p, "ours": r["effect"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    out = pd.DataFrame(rows)
    out["diff"] = out["ours"] - out["paper"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=default_model_dir(), help="paper counting checkpoint folder")
    ap.add_argument("--n", type=int, default=None, help="random subset of the filtered split (default: all of it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--model-class", choices=["hooked", "bridge"], default=None, help="default: hooked when TL < 4")
    ap.add_argument("--contrast", choices=["random", "flip", "both"], default="both")
    ap.add_argument("--seed", type=int, default=0, help="seed of the contrasts and of the subset")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--csv", type=Path, default=None, help="also write the comparison table here")
    ap.add_argument("--progress", action="store_true", help="tqdm bars even when not a terminal")
    args = ap.parse_args(argv)

    if not (args.model / "config.json").is_file():
        print(f"no checkpoint at {args.model}; set --model or TL_INVERSION_PAPER_COUNTING")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model_class = args.model_class
    if model_class is None:
        try:
            from transformer_lens import HookedTransformer  # noqa: F401

            model_class = "hooked"
        except Exception:
            model_class = "bridge"
    t0 = time.time()
    model = load_hf_gpt2(
        args.model, model_class, "default" if model_class == "hooked" else "compat", device=args.device
    )
    tokens = paper_split("test")
    print(f"model: {type(model).__name__} on {args.device}; test split {tuple(tokens.shape)} ({time.time() - t0:.1f}s)")
    kinds = ["random", "flip"] if args.contrast == "both" else [args.contrast]
    tables = []
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    for kind in kinds:
        t = time.time()
        cs = build_contrasts(kind, tokens, args.seed)
        if args.n is not None and args.n < cs.n:
            pick = torch.randperm(cs.n, generator=torch.Generator().manual_seed(args.seed))[: args.n]
            cs = cs.subset(pick.sort().values)
        print(
            f"\n[{kind}] {cs.n} pairs (dropped for length: {cs.info['n_excluded_length']}); "
            f"built in {time.time() - t:.1f}s"
        )
        t = time.time()
        df = measure(model, cs, batch_size=args.batch_size, n_boot=args.n_boot, progress=args.progress or None)
        dt = time.time() - t
        n_runs = df.drop_duplicates("nodes").shape[0] + 2
        print(f"[{kind}] patching: {dt:.1f}s ({cs.n * n_runs / dt:,.0f} example-forwards/s)")
        print(
            df[
                [
                    "direction",
                    "step",
                    "added",
                    "LD_clean",
                    "LD_patched",
                    "effect",
                    "ci_low",
                    "ci_high",
                    "increment",
                    "normalised",
                ]
            ].to_string(float_format=lambda x: f"{x:.3f}")
        )
        # identical clean and contrast inputs: exactly zero effect
        same = cs.subset(torch.arange(min(cs.n, 2000)))
        same.contrast_tokens = same.clean_tokens.clone()
        zero = patch_nodes(
            model, list(ORDER.values()), same, trim_padding=True, batch_size=args.batch_size, n_boot=0, progress=False
        )
        print(f"[{kind}] identical clean and contrast inputs, effects: {zero['effect'].tolist()}")
        tables.append(compare(kind, df))
    table = pd.concat(tables, ignore_index=True)
    print("\nComparison with the paper (effect = mean LD_clean - mean LD_patched, logits):")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    worst = table["diff"].abs().max()
    print(f"\nlargest |ours - paper| = {worst:.3f} (total {time.time() - t0:.0f}s)")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
