"""Time of one per-hook training step: decoders one by one against stacked (vmapped).

The probed model is the counting shape (random weights; vocab 40, n_ctx 33, d_model 64,
2 layers, 1 head); the sites are residual hooks of one width, so all decoders stack.
Prints a table of median milliseconds per step (after warm-up) for each number of
decoders, batch size and mode.

    python benchmarks/step_time.py --device cuda --decoders 1 4 9 --batch-sizes 512 4096
    python benchmarks/step_time.py --device cuda --decoders 9 --modes stacked stacked+compiled
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_files import write_gpt2  # noqa: E402

from tl_inversion.model.loading import load_hf_gpt2  # noqa: E402
from tl_inversion.tasks import counting  # noqa: E402
from tl_inversion.training.config import TrainConfig  # noqa: E402
from tl_inversion.training.trainer import train  # noqa: E402

SITES = [f"blocks.{layer}.{hook}" for layer in (0, 1)
         for hook in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")]
SITES += ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--decoders", type=int, nargs="+", default=[1, 4, 9])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--modes", nargs="+", default=["one-by-one", "stacked"],
                    choices=["one-by-one", "stacked", "stacked+compiled"],
                    help="step variants; stacked+compiled uses torch.compile (its compile time is excluded)")
    args = ap.parse_args()
    cls = "hooked"
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        cls = "bridge"
    folder = write_gpt2(Path(tempfile.mkdtemp()), d_model=64, n_layers=2, n_heads=1)
    model = load_hf_gpt2(folder, cls, "default" if cls == "hooked" else "compat", device=args.device)
    task = counting.make_task()
    data = counting.paper_split("test")[:100000]
    rows = []
    for n in args.decoders:
        for bs in args.batch_sizes:
            for mode in args.modes:
                stack = mode.startswith("stacked")
                if stack and n == 1:
                    continue
                times: list[float] = []
                last = [time.perf_counter()]

                def tick(step: int, record: dict, times: list[float] = times, last: list[float] = last) -> None:
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    times.append(now - last[0])
                    last[0] = now

                cfg = TrainConfig(sites=SITES[:n], steps=args.steps, batch_size=bs, eval_every=0, eval_n=4,
                                  checkpoint_every=0,
                                  device=args.device, stack=stack, compile=mode.endswith("compiled"),
                                  decoder={"d_model": args.d_model})
                train(model, task, data, data, cfg, progress=False, callback=tick)
                ms = 1000 * statistics.median(times[5:-1])
                rows.append({"decoders": n, "batch": bs, "mode": mode,
                             "ms_per_step": ms, "inputs_per_s": bs / ms * 1000})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(f"\n== per-hook training step on {args.device} ({torch.__version__}), decoders d{args.d_model} ==")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.1f}"))


if __name__ == "__main__":
    main()
