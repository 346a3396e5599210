"""``tl-inversion evaluate`` (flags from :class:`~tl_inversion.evaluation.config.EvaluateConfig`)
and ``tl-inversion select-sites`` (a new bank of some sites of others).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tl_inversion.cli.common import (
    SAVE_DTYPES,
    TASK_HELP,
    add_model_args,
    attach_bank,
    check_out_dir,
    load_model,
    read_banks,
    stored_dtype,
)
from tl_inversion.cli.config_args import add_config_args
from tl_inversion.errors import InputValueError

__all__ = ["cmd_evaluate", "cmd_select_sites", "populate_evaluate", "populate_select_sites"]


def populate_evaluate(p: argparse.ArgumentParser) -> None:
    """The flags of ``evaluate``: model, bank, report folder and every EvaluateConfig field."""
    from tl_inversion.evaluation.config import EvaluateConfig

    add_model_args(p)
    p.add_argument("--bank", required=True, nargs="+", help="folder of a saved decoder bank (several: merged)")
    p.add_argument("--task", default="counting", help=TASK_HELP)
    p.add_argument("--out", required=True,
                   help="report folder (report.md, CSV files, PNG plots); a report already there is overwritten, "
                        "and its completeness / consistency files are removed when this evaluation has none")
    cfg = add_config_args(p, EvaluateConfig, title="evaluation (EvaluateConfig)",
                          overrides={"sites": {"nargs": "+", "metavar": "SITE"},
                                     "positions": {"nargs": "+", "metavar": "POSITION"},
                                     "schedule": {"metavar": "T,NOISE"}})
    p.set_defaults(func=cmd_evaluate, config_args=[cfg])


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Measure the bank per site and position; write and summarise the report."""
    check_out_dir(args.out, "--out")
    cfg = args.config_args[0].build(args)
    banks, bank = read_banks(args.bank)
    for site in cfg.sites or []:
        bank.lookup(site)
    if cfg.blurred:
        bank.check_blurred(cfg.blurred)

    from tl_inversion.evaluation.evaluate import evaluate
    from tl_inversion.tasks import get_task, task_data
    from tl_inversion.tasks.plan import EvalPlan, default_plan

    model = load_model(args)
    bank = attach_bank(banks, bank, model)
    task = get_task(args.task)
    try:
        plan = default_plan(args.task)
    except ValueError:
        if not cfg.positions:
            raise InputValueError(f"task {args.task!r} has no default plan: give --positions") from None
        plan = EvalPlan(positions=[])
    report = evaluate(model, bank, task, task_data(args.task, "test"), cfg.apply_to_plan(plan),
                      **cfg.evaluate_kwargs())
    path = report.write(args.out)
    table = report.faithfulness[["faithfulness", "pool_in_preimage", "valid"]]
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print(json.dumps(report.summary(), indent=2))
    print(f"wrote {path}")
    return 0


def populate_select_sites(p: argparse.ArgumentParser) -> None:
    """The flags of ``select-sites``."""
    p.add_argument("--bank", required=True, nargs="+", help="folder of a saved decoder bank (several: merged first)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sites", nargs="+", help="the sites to keep")
    which.add_argument("--drop-sites", nargs="+", help="the sites to leave out")
    p.add_argument("--save-dtype", choices=SAVE_DTYPES, default=None,
                   help="dtype of the new bank on disk (default: the --bank folders' own when they agree, "
                        "else float32)")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the new bank; nothing is replaced")
    p.set_defaults(func=cmd_select_sites, config_args=[])


def cmd_select_sites(args: argparse.Namespace) -> int:
    """Save the kept sites of the banks as a new bank folder."""
    out = Path(args.out).resolve()
    for b in args.bank:
        if out == Path(b).resolve() or out in Path(b).resolve().parents:
            raise InputValueError(f"--out {args.out!r} is or holds the --bank folder {b}; write the selection to a "
                                  "new folder")
    if Path(args.out).is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise InputValueError(f"--out {args.out!r} exists and is not an empty folder; select-sites writes a new "
                              "folder and replaces nothing: give a new path")
    import torch

    _, bank = read_banks(args.bank)
    bank = bank.select(args.sites, drop=args.drop_sites)
    stored = {stored_dtype(b) for b in args.bank}
    dtype = args.save_dtype or (stored.pop() if len(stored) == 1 else "float32")
    bank.save(args.out, dtype=getattr(torch, dtype))
    n = len(bank.sites)
    print(f"wrote {args.out}: {n} site{'' if n == 1 else 's'} ({', '.join(str(s) for s in bank.sites)})")
    return 0
