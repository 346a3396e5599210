"""Train a tiny decoder bank on the embedded demo model; launched by ``test_ddp.py``.

Run under ``python -m torch.distributed.run --nproc_per_node=2 --standalone`` it trains as
two gloo ranks on CPU, each on half of the global batch; run plainly it trains in one
process on the whole batch. ``argv[1]`` is the output folder (one sub-folder per topology:
``per_hook`` with two stacked decoders, ``shared``), ``argv[2]`` the global batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tl_inversion.demo import asset_dir
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.tasks import counting
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.trainer import train


def main() -> None:
    """Train 4 steps of each topology (the second call reuses the process group of the first)."""
    torch.set_num_threads(1)
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    model = load_hf_gpt2(asset_dir() / "probed")
    for topology in ("per_hook", "shared"):
        cfg = TrainConfig(sites=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], topology=topology, steps=4,
                          batch_size=batch, lr=3e-3, warmup_steps=1, eval_every=2, eval_n=4, checkpoint_every=2,
                          decoder={"d_model": 16, "n_layers": 1, "n_heads": 2, "n_cond_blocks": 1}, device="cpu",
                          seed=3, bos_prob=0.2)
        train(model, "counting", counting.paper_split("train")[:300], counting.paper_split("test")[:50], cfg,
              out_dir=out / topology, progress=False)


if __name__ == "__main__":
    main()
