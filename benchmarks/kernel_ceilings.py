"""Completeness AUROC of a bank's addition decoders next to what each training kernel allows.

For every site of the bank and the addition plan's 16 completeness rows (four queries at
``= A1 A2 A3``): the decoder's AUROC and ``auroc_ideal`` (a perfect decoder of the bank's
own training noise), and on the same scored candidates the ideal AUROC of other kernels
(``tl_inversion.noise.kernel_log_posterior``): which blur could reach 0.95 on which row,
before any GPU time is spent training it. Prints per-kernel counts of rows >= 0.95 and
writes one CSV row per (site, position, query).

    python benchmarks/kernel_ceilings.py --model runs/addition_probed --bank runs/E/group_a/bank \\
        --sites 'blocks.0.attn.hook_result[3]' --kernels ball:0.1 ball:0.2 preimage:0.1 --out ceilings.csv

On this 2-core CPU a site takes about 5 minutes (810,000 candidates, 20,000 scored per row).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.evaluation.completeness import auroc, completeness, preimage_distances_by_site
from tl_inversion.inversion.verify import special_mask_of
from tl_inversion.model.activations import activations_at, harvest
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.model.sites import validate_sites
from tl_inversion.tasks import addition
from tl_inversion.tasks.plan import default_plan
from tl_inversion.training.noise import NOISE_SHAPES, kernel_log_posterior


def _kernel(text: str) -> tuple[str, float]:
    shape, _, level = text.partition(":")
    if shape not in NOISE_SHAPES or not level:
        raise argparse.ArgumentTypeError(f"a kernel is SHAPE:LEVEL with SHAPE one of {NOISE_SHAPES}, got {text!r}")
    return shape, float(level)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the probed addition model folder")
    ap.add_argument("--bank", nargs="+", required=True, help="bank folder(s), merged")
    ap.add_argument("--sites", nargs="*", help="sites to measure (default: all of the bank's)")
    ap.add_argument("--kernels", nargs="*", type=_kernel, default=[("ball", 0.1), ("ball", 0.2), ("preimage", 0.1)],
                    help="SHAPE:LEVEL kernels whose ideal AUROC to add (default: ball:0.1 ball:0.2 preimage:0.1)")
    ap.add_argument(
        "--max-candidates", type=int, default=20000, help="scored per row, as evaluate (default: %(default)s)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="kernel_ceilings.csv")
    args = ap.parse_args()
    model = load_hf_gpt2(args.model, device=args.device)
    banks = [DecoderBank.load(b, device=args.device) for b in args.bank]
    bank = DecoderBank.merge(banks) if len(banks) > 1 else banks[0]
    sites = validate_sites(args.sites or [str(s) for s in bank.sites], model)
    task = addition.make_task()
    plan = default_plan("addition")
    cand = plan.candidates()
    queries, positions, names = plan.completeness_rows(task)  # as evaluate
    z_by_site = activations_at(model, queries, positions, sites, validate=False)
    t0 = time.perf_counter()
    dists = preimage_distances_by_site(model, cand, z_by_site, task.special_ids, progress=False, batch_size=16384)
    print(f"true preimages: {time.perf_counter() - t0:.0f} s", flush=True)
    frames = []
    for site in sites:
        t0 = time.perf_counter()
        res = completeness(
            model,
            bank,
            task,
            site,
            queries,
            positions,
            cand,
            max_candidates=args.max_candidates,
            n_samples=0,
            progress=False,
            distances=dists.pop(site),
        )
        s = res.summary.rename(columns={"position": "position_index"})
        vals: dict[str, list[float]] = {f"ideal_{shape}_{level:g}": [] for shape, level in args.kernels}
        for qi in range(queries.shape[0]):  # one probed pass over a row's scored candidates, every kernel
            sc = res.scores[res.scores["query"] == qi]
            x = cand[torch.tensor(sc["candidate"].to_numpy())]
            a = torch.cat(
                [
                    harvest(model, x[i : i + 4096], [site], validate=False)[site].cpu()
                    for i in range(0, x.shape[0], 4096)
                ]
            )
            ignore = special_mask_of(x, task.special_ids)
            for shape, level in args.kernels:
                logp = kernel_log_posterior(z_by_site[site][qi], a, ignore, shape, level)
                vals[f"ideal_{shape}_{level:g}"].append(auroc(logp.numpy(), sc["member"].to_numpy()))
        for name, v in vals.items():
            s[name] = v
        s.insert(0, "position", [names[i] for i in s["query"]])
        s.insert(0, "site", str(site))
        frames.append(s)
        print(f"{site}: {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(args.out, index=False)
    e = df[(df["n_members"] >= plan.min_members) & df["auroc"].notna()]  # as evaluate: a row needs a non-member too
    cols = ["auroc", "auroc_ideal"] + [c for c in df.columns if c.startswith("ideal_")]
    table = pd.DataFrame(
        {c: {"rows >= 0.95": int((e[c] >= 0.95).sum()), "median": e[c].median(), "min": e[c].min()} for c in cols}
    ).T
    print(
        f"{len(e)} rows with >= {plan.min_members} members (auroc: the decoder; auroc_ideal: a perfect decoder "
        "of the bank's training noise; ideal_*: of other kernels, same candidates)"
    )
    print(table.to_markdown(floatfmt=".3f"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
