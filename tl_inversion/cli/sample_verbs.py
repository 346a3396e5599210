"""``tl-inversion demo`` and ``tl-inversion sample``: preimages of queries (flags of ``sample``
from :class:`~tl_inversion.inversion.config.SampleConfig`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_inversion.cli.common import TASK_HELP, add_model_args, attach_bank, load_model, read_banks, require_at_least
from tl_inversion.cli.config_args import add_config_args
from tl_inversion.errors import InputValueError

__all__ = ["DEMO_DEFAULTS", "cmd_demo", "cmd_sample", "populate_demo", "populate_sample"]

#: ``run_demo``'s keyword defaults (demo.py imports torch, so they are not read from it here;
#: a test checks they agree).
DEMO_DEFAULTS = {"html": "tl_inversion_demo.html", "n_repeats": 1, "top": 8}


def populate_demo(p: argparse.ArgumentParser) -> None:
    """The flags of ``demo``."""
    p.add_argument("--html", default=DEMO_DEFAULTS["html"], help="where to write the HTML page (default: %(default)s)")
    p.add_argument("--n-repeats", type=int, default=DEMO_DEFAULTS["n_repeats"],
                   help="repeats of the 4-setting schedule (paper: 4) (default: %(default)s)")
    p.add_argument(
        "--top", type=int, default=DEMO_DEFAULTS["top"], help="rows to print per query (default: %(default)s)"
    )
    p.set_defaults(func=cmd_demo, config_args=[])


def cmd_demo(args: argparse.Namespace) -> int:
    """Sample preimages with the embedded counting model and decoders."""
    if args.html and Path(args.html).is_dir():
        raise InputValueError(f"--html must be a file path, but {args.html} is a folder")
    require_at_least("--top", args.top, 1)
    from tl_inversion.demo import run_demo

    run_demo(html=args.html, n_repeats=args.n_repeats, top=args.top)
    return 0


def populate_sample(p: argparse.ArgumentParser) -> None:
    """The flags of ``sample``: the model, bank, query and every SampleConfig field."""
    from tl_inversion.inversion.config import SampleConfig

    add_model_args(p)
    p.add_argument("--bank", required=True, nargs="+", help="folder of a saved decoder bank (several: merged)")
    p.add_argument("--task", default="counting", help=TASK_HELP)
    p.add_argument("--query", required=True, help="input text without B/E/P, e.g. 'ddkdkkxdk|k:4'")
    p.add_argument("--site", required=True, help="a site of the bank, e.g. 'blocks.1.attn.hook_result[0]'")
    p.add_argument("--position", required=True, help="index or a task-named position such as ':'")
    p.add_argument("--top", type=int, default=20, help="rows to print, nearest first (default: %(default)s)")
    p.add_argument("--html", default=None, help="also write the samples as an HTML page to this file")
    cfg = add_config_args(
        p, SampleConfig, title="sampling (SampleConfig)", overrides={"schedule": {"metavar": "T,NOISE"}}
    )
    p.set_defaults(func=cmd_sample, config_args=[cfg])


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample, verify and print the preimage of one query."""
    from tl_inversion.inversion.sampling import sample_preimage
    from tl_inversion.tasks import get_task

    require_at_least("--top", args.top, 1, " (rows to print)")
    cfg = args.config_args[0].build(args)
    banks, bank = read_banks(args.bank)
    bank.lookup(args.site)
    model = load_model(args)
    bank = attach_bank(banks, bank, model, allow_mismatch=cfg.allow_mismatch)
    result = sample_preimage(bank, model, get_task(args.task), args.query, args.site, args.position, **cfg.kwargs())
    print(repr(result))  # one line: query, site, position, candidates in and out of the preimage, epsilon
    columns = ["text", "distance", "matched_pos", "in_preimage", "valid", "temperature", "noise"]
    print(result.df[columns].head(args.top).to_string())
    if args.html:
        result.to_html(args.html)
        print(f"wrote {args.html}")
    return 0
