"""Time of the brute-force true preimage for the 13 addition sites: a probed pass per site
against one pass for all sites (what ``evaluate`` does).

Uses the addition plan's 16 completeness queries and the first ``--n`` of the 810,000
addition inputs; any addition-shaped probed model (random weights by default, the same
cost as a trained one; or ``--model DIR``).

    python benchmarks/preimage_pass.py --n 100000
    python benchmarks/preimage_pass.py --model runs/addition_probed --device cuda --n 810000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_files import write_gpt2  # noqa: E402

from tl_inversion.evaluation.completeness import preimage_distances, preimage_distances_by_site  # noqa: E402
from tl_inversion.model.activations import activations_at
from tl_inversion.model.loading import load_hf_gpt2  # noqa: E402
from tl_inversion.model.sites import (
    paper_addition_sites,  # noqa: E402
    validate_sites,
)
from tl_inversion.tasks import addition  # noqa: E402
from tl_inversion.tasks.plan import default_plan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="probed addition model folder (default: a random 2-layer, 4-head, d 32 one)")
    ap.add_argument("--n", type=int, default=100_000, help="candidates (default: %(default)s; all: 810000)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or write_gpt2(Path(tmp) / "m", d_vocab=15, n_ctx=14, d_model=32, n_layers=2, n_heads=4)
        model = load_hf_gpt2(folder, device=args.device)
    task = addition.make_task()
    plan = default_plan("addition")
    sites = validate_sites(paper_addition_sites(), model)
    queries, positions, _ = plan.completeness_rows(task)
    z = activations_at(model, queries, positions, sites)
    candidates = addition.paper_split("all")[: args.n]
    t = time.perf_counter()
    per_site = {s: preimage_distances(model, candidates, s, z[s], task.special_ids, progress=False) for s in sites}
    t_per_site = time.perf_counter() - t
    t = time.perf_counter()
    together = preimage_distances_by_site(model, candidates, z, task.special_ids, progress=False)
    t_together = time.perf_counter() - t
    same = all(torch.equal(per_site[s][0], together[s][0]) for s in sites)
    print(f"{len(sites)} sites, {queries.shape[0]} queries, {args.n:,} candidates on {args.device}: "
          f"a pass per site {t_per_site:.1f} s, one pass for all {t_together:.1f} s (identical distances: {same})")


if __name__ == "__main__":
    main()
