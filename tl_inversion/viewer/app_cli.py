"""``tl-inversion view``: the live preimage viewer from the command line.

``main(["--model", DIR, "--bank", DIR])`` serves a trained bank; ``main([])`` serves the
embedded counting demo. The task defaults to the one recorded in the bank.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tl_inversion.errors import InputValueError, TLInversionError

__all__ = ["add_arguments", "build_parser", "main", "run"]

DESCRIPTION = "Live preimage viewer in the browser (no model/bank: the embedded demo)."


def build_parser() -> argparse.ArgumentParser:
    """The viewer's argument parser (``--model``, ``--bank``, ``--task``, ``--host``, ``--port``)."""
    p = argparse.ArgumentParser(prog="tl-inversion view", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the viewer's flags to ``p`` (also used by the ``tl-inversion view`` verb)."""
    p.add_argument("--model", help="probed model folder (Hugging Face GPT-2 format)")
    p.add_argument("--bank", help="decoder bank folder trained on --model")
    p.add_argument("--task", help="task name (default: the task recorded in the bank)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, local only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one; default: %(default)s)")
    p.add_argument("--query", default="", help="input the page starts with")
    p.add_argument("--verbose", action="store_true", help="log every request")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the viewer until Ctrl-C.

    Args:
        argv: command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after serving, 2 for a usage error (printed as one line).
    """
    args = build_parser().parse_args(argv)
    try:
        run(args)
        return 0
    except (TLInversionError, OSError) as exc:
        print(f"tl-inversion view: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> None:
    """Serve what ``args`` names until Ctrl-C.

    Raises:
        InputValueError: only one of ``--model`` / ``--bank``, or no task known.
        LoadError, SiteError, ModelMismatchError: the folders cannot be served together.
    """
    if (args.model is None) != (args.bank is None):
        raise InputValueError("give both --model and --bank, or neither (the embedded demo)")
    if args.model is None:
        from tl_inversion.viewer.server import serve_demo

        serve_demo(host=args.host, port=args.port, default_query=args.query, verbose=args.verbose)
        return
    from tl_inversion.decoding.bank import DecoderBank
    from tl_inversion.model.loading import load_hf_gpt2
    from tl_inversion.tasks import get_task
    from tl_inversion.viewer.server import serve

    model = load_hf_gpt2(args.model)
    bank = DecoderBank.load(args.bank, model)
    name = args.task or (bank.meta.get("task") or {}).get("name")
    if not name:
        raise InputValueError("the bank records no task: give --task")
    serve(model, bank, get_task(name), host=args.host, port=args.port, default_query=args.query,
          verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
