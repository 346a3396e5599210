"""``tl-inversion train-probed`` and ``tl-inversion train``: flags from ``ProbedConfig`` and
``TrainConfig`` (with the ``DecoderConfig`` fields of ``TrainConfig.decoder`` as
``--decoder-*``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tl_inversion.cli.common import SAVE_DTYPES, TASK_HELP, add_model_args, load_model, require_at_least
from tl_inversion.cli.config_args import Nested, add_config_args
from tl_inversion.errors import InputValueError

__all__ = ["cmd_train", "cmd_train_probed", "populate_train", "populate_train_probed"]


def _train_config_class() -> type:
    from tl_inversion.training.config import TrainConfig

    return TrainConfig


def populate_train_probed(p: argparse.ArgumentParser) -> None:
    """The flags of ``train-probed``."""
    from tl_inversion.training.probed import ProbedConfig

    p.add_argument("--task", default="counting", help="counting or addition (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for the model (config.json, model.safetensors, recipe.json)")
    p.add_argument("--test-limit", type=int, default=0,
                   help="measure test accuracy on the first N test inputs (0: all) (default: %(default)s)")
    cfg = add_config_args(p, ProbedConfig, title="probed model (ProbedConfig)")
    p.set_defaults(func=cmd_train_probed, config_args=[cfg])


def cmd_train_probed(args: argparse.Namespace) -> int:
    """Train a probed model on a task and print what ``train_probed_model`` returns."""
    from tl_inversion.tasks import get_task, task_data
    from tl_inversion.training.probed import train_probed_model

    task = get_task(args.task)
    require_at_least("--test-limit", args.test_limit, 0, " (0: the whole test split)")
    cfg = args.config_args[0].build(args)
    test = task_data(args.task, "test")
    if args.test_limit:
        test = test[: args.test_limit]
    info = train_probed_model(task, task_data(args.task, "train"), test, task.answer_mask, cfg, args.out)
    print(json.dumps(info, indent=2))
    return 0


def populate_train(p: argparse.ArgumentParser) -> None:
    """The flags of ``train``: the probed model, the run folder, and every TrainConfig field."""
    from tl_inversion.decoding.config import DecoderConfig
    from tl_inversion.training.config import DECODER_SET_BY_TRAINING

    add_model_args(p, device=False)  # TrainConfig.device places the model too
    p.add_argument("--task", default="counting", help=TASK_HELP)
    p.add_argument("--preset", choices=["paper", "paper-counting", "paper-addition", "cpu"],
                   help="the paper's site set (instead of --sites); 'cpu' also takes the CPU-sized training "
                        "settings of TrainConfig's PRESETS['cpu'] for every field not given")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, log.jsonl, config.json and the final bank/")
    p.add_argument("--no-resume", action="store_true",
                   help="refuse to continue from checkpoints in --out (error if there are any)")
    p.add_argument("--save-dtype", choices=SAVE_DTYPES, default="float32",
                   help="dtype of the final bank on disk (default: %(default)s)")
    cfg = add_config_args(
        p, _train_config_class(), title="training (TrainConfig; --decoder-*: DecoderConfig)",
        nested={"decoder": Nested(DecoderConfig, exclude=DECODER_SET_BY_TRAINING)},
        aliases={"time_limit_s": ["--time-limit"], "init_banks": ["--init-bank"], "decoder.d_model": ["--d-model"],
                 "decoder.n_layers": ["--n-layers"], "decoder.n_heads": ["--n-heads"]},
        overrides={"sites": {"required": False, "metavar": "SITE"}, "init_banks": {"metavar": "BANK"}},
    )
    p.set_defaults(func=cmd_train, config_args=[cfg])


def _sites(args: argparse.Namespace, sites: list[str] | None, model: Any) -> list[str]:
    """The sites of ``--sites``, else of ``--preset`` for the model's shape."""
    from tl_inversion.model.sites import paper_addition_sites, paper_counting_sites

    if sites:
        return list(sites)
    paper = args.preset in ("paper", "cpu")
    if args.preset == "paper-counting" or (paper and args.task == "counting"):
        return [str(s) for s in paper_counting_sites(model.cfg.n_layers, model.cfg.n_heads)]
    if args.preset == "paper-addition" or (paper and args.task == "addition"):
        return [str(s) for s in paper_addition_sites(model.cfg.n_layers, model.cfg.n_heads)]
    raise InputValueError("give --sites (site strings, e.g. 'blocks.1.attn.hook_result[0]') or --preset "
                          "(paper-counting, paper-addition; paper or cpu with --task counting or addition)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train decoders for the sites of a probed model; print the faithfulness table."""
    import torch

    from tl_inversion.tasks import get_task, task_data
    from tl_inversion.training.trainer import train

    spec = args.config_args[0]
    model = load_model(args, device=spec.value(args, "device"))
    task = get_task(args.task)
    given = spec.values(args)
    sized = {}
    if args.preset == "cpu":
        from tl_inversion.training.config import PRESETS

        sized = {k: v for k, v in PRESETS["cpu"].items() if k not in given}
    cfg = spec.build(args, sites=_sites(args, given.get("sites"), model), **sized)
    result = train(model, task, task_data(args.task, "train"), task_data(args.task, "test"), cfg, out_dir=args.out,
                   resume=not args.no_resume, save_dtype=getattr(torch, args.save_dtype))
    print(result.faithfulness.to_string())
    mean = result.faithfulness["faithfulness"].mean()
    if result.steps_this_call == 0:
        print(f"nothing to train: the run in {args.out} had already reached step {result.bank.meta.get('steps')} "
              f"(--steps {cfg.steps}); mean faithfulness {mean:.4f}; bank: {Path(args.out) / 'bank'}")
    else:
        print(f"mean faithfulness {mean:.4f}; {result.steps_this_call} steps, "
              f"{result.samples_per_second:.0f} inputs/s, {result.seconds:.1f} s; bank: {Path(args.out) / 'bank'}")
    return 0
