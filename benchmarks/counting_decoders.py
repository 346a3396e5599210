"""Train decoders for the paper's 9 counting sites on a counting model, then measure them.

Prints (1) the per-site faithfulness rate (paper's definition: one temperature-1 sample per
held-out activation, fraction with D < 0.1), (2) training throughput, (3) the reading of
the paper: among in-preimage samples at ':', the fraction whose query-letter count equals
the query's, for the layer-1 head output against the layer-0 head output, and (4) sampling
throughput (verified samples per second).

    python benchmarks/counting_decoders.py --model ../shared/models/paper_counting \
        --out runs/paper_decoders --steps 4000 --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from tl_inversion.devices import resolve_device
from tl_inversion.evaluation.consistency import baseline_consistency, feature_consistency
from tl_inversion.inversion.sampling import sample_many
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.model.sites import paper_counting_sites
from tl_inversion.tasks import counting
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--topology", default="per_hook", choices=["per_hook", "shared"])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--n-queries", type=int, default=50, help="queries for the reading at ':'")
    ap.add_argument("--n-repeats", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop training after this many seconds")
    ap.add_argument("--save-dtype", default="float32")
    args = ap.parse_args()

    device = resolve_device(args.device)
    model = load_hf_gpt2(args.model, device=device)
    task = counting.make_task()
    train_data, test_data = counting.paper_split("train"), counting.paper_split("test")
    cfg = TrainConfig(
        sites=[str(s) for s in paper_counting_sites()], topology=args.topology, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup_steps=200, schedule="cosine", eval_every=args.eval_every,
        checkpoint_every=args.eval_every, device=device, time_limit_s=args.time_limit,
        decoder={"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads},
    )
    result = train(model, task, train_data, test_data, cfg, out_dir=args.out,
                   save_dtype=getattr(torch, args.save_dtype))
    faith = result.faithfulness
    print("\n== faithfulness rate per site (200 held-out activations, T=1, D < 0.1) ==")
    print(faith.to_string(float_format=lambda x: f"{x:.3f}"))
    print(f"mean over sites: {faith['faithfulness'].mean():.4f}")
    print(f"training: {result.samples_per_second:.0f} inputs/s ({len(cfg.sites)} sites each) on {device}, "
          f"{result.seconds:.0f} s for {int(result.bank.meta['steps'])} steps of {args.batch_size}")

    g = torch.Generator().manual_seed(123)
    queries = test_data[torch.randperm(test_data.shape[0], generator=g)[: args.n_queries]]
    rows = []
    for site in ["blocks.1.attn.hook_result[0]", "blocks.0.attn.hook_result[0]"]:
        t0 = time.perf_counter()
        results = sample_many(result.bank, model, task, queries, site, ":", n_repeats=args.n_repeats, seed=0)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = sum(len(r.df) for r in results)
        cons = feature_consistency(results, counting.query_counts)
        rows.append({
            "site": site, "position": ":", "queries": len(results),
            "in_preimage_fraction": float(pd.Series([r.summary()["in_preimage_fraction"] for r in results]).mean()),
            "count_consistency": float(cons["consistency"].mean(skipna=True)),
            "in_preimage_samples": int(cons["n"].sum()),
            "verified_samples_per_s": n / dt,
        })
    table = pd.DataFrame(rows).set_index("site")
    print("\n== reading at ':' : fraction of in-preimage samples with the query's count ==")
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    chance = baseline_consistency(test_data[:20000], queries, counting.query_counts)
    print(f"chance (random test inputs): {chance:.3f}")
    summary = {"faithfulness": faith["faithfulness"].to_dict(),
               "mean_faithfulness": float(faith["faithfulness"].mean()),
               "train_inputs_per_s": result.samples_per_second, "train_seconds": result.seconds,
               "reading": table.reset_index().to_dict(orient="records"), "chance": chance, "device": device,
               "steps": int(result.bank.meta["steps"]), "batch_size": args.batch_size}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
