r"""``tl-inversion``: the command line, mirroring the Python API.

    tl-inversion demo                       # embedded counting model + decoders, offline
    tl-inversion train-probed --task counting --out runs/probed
    tl-inversion train --model runs/probed --task counting --preset paper --out runs/dec
    tl-inversion sample --model runs/probed --bank runs/dec/bank --task counting \
        --query "aabca|a:3" --site "blocks.1.attn.hook_result[0]" --position :
    tl-inversion evaluate --model runs/probed --bank runs/dec/bank --task counting --out runs/report
    tl-inversion select-sites --bank runs/dec/bank --drop-sites "blocks.0.hook_resid_pre" --out runs/some
    tl-inversion patch --model runs/probed --task counting --nodes "L1H0@:" --out runs/patch
    tl-inversion path-patch --model runs/probed --task counting --edges "L0H0@c -> L1H0.v@c" --out runs/path

The options of ``train-probed``, ``train``, ``sample`` and ``evaluate`` are generated from the
fields of ``ProbedConfig``, ``TrainConfig`` (+ ``DecoderConfig`` as ``--decoder-*``),
``SampleConfig`` and ``EvaluateConfig`` (:mod:`tl_inversion.cli.config_args`); ``--help`` of a
verb lists every field with its default.

Errors: a :class:`~tl_inversion.errors.TLInversionError` (invalid input) prints one line
``tl-inversion <verb>: error: <message>`` and exits with status 2; any other exception is a
bug and keeps its traceback. Only the chosen verb's modules are imported, and heavy ones
(torch, TransformerLens) only when the verb runs: ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from typing import Any, Iterable, Sequence

from tl_inversion.errors import ConfigError, ModelMismatchError, TLInversionError

__all__ = ["VERBS", "build_parser", "error_message", "main"]

#: ``{verb: (help, module, function adding its flags)}``; the module is imported only when
#: the verb's flags are needed.
VERBS: dict[str, tuple[str, str, str]] = {
    "demo": ("sample preimages with the embedded counting model and decoders (offline, CPU)",
             "tl_inversion.cli.sample_verbs", "populate_demo"),
    "train-probed": ("train a probed model on a task (this project's recipe)",
                     "tl_inversion.cli.train_verbs", "populate_train_probed"),
    "train": ("train decoders for sites of a probed model", "tl_inversion.cli.train_verbs", "populate_train"),
    "sample": ("sample and verify the preimage of one query", "tl_inversion.cli.sample_verbs", "populate_sample"),
    "select-sites": ("save some sites of one or more banks as a new bank (to merge runs site by site)",
                     "tl_inversion.cli.evaluate_verbs", "populate_select_sites"),
    "evaluate": ("faithfulness, feature consistency and completeness per site and position: a report",
                 "tl_inversion.cli.evaluate_verbs", "populate_evaluate"),
    "patch": ("activation patching of circuit nodes on a task's contrasts: tables and the cumulative plot",
              "tl_inversion.cli.patch_verbs", "populate_patch"),
    "path-patch": ("path patching of circuit edges on a task's contrasts: a table",
                   "tl_inversion.cli.patch_verbs", "populate_path_patch"),
    "view": ("the live preimage viewer in the browser (no --model/--bank: the embedded demo)",
             "tl_inversion.cli.view_verb", "populate_view"),
}


_DESCRIPTION = "InversionView for TransformerLens: train decoders, sample and verify preimages, evaluate, patch."


def build_parser(verbs: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tl-inversion``.

    Args:
        verbs: the verbs whose flags are added (their modules imported); ``None``: all. Every
            verb is listed either way (``tl-inversion --help`` needs none of their flags).

    Returns:
        The parser; parsed arguments carry ``func`` (the verb's function) and ``config_args``
        (the :class:`~tl_inversion.cli.config_args.ConfigArgs` of the verb's configs).
    """
    parser = argparse.ArgumentParser(prog="tl-inversion", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    wanted = set(VERBS) if verbs is None else set(verbs)
    for name, (help_text, module, populate) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in wanted and _available(module):
            getattr(importlib.import_module(module), populate)(p)
    return parser


def _available(module: str) -> bool:
    """Whether a verb module is present (the patching verbs need the patching package)."""
    return importlib.util.find_spec(module) is not None


def _verb_of(argv: Sequence[str]) -> list[str]:
    """The verb named on the command line (its first word that is not an option), if any."""
    for word in argv:
        if not word.startswith("-"):
            return [word] if word in VERBS else []
    return []


def error_message(err: TLInversionError, args: argparse.Namespace) -> str:
    """The one-line CLI text of a library error.

    A :class:`~tl_inversion.errors.ConfigError` with a ``field`` names the field's flag (the
    message's leading field name becomes the flag, or the flag is put in front); a
    :class:`~tl_inversion.errors.ModelMismatchError` names ``--allow-mismatch`` where the
    verb has it.

    Args:
        err: the error.
        args: the parsed arguments of the verb that raised it.

    Returns:
        The message on one line.
    """
    msg = str(err)
    if isinstance(err, ModelMismatchError):
        if _flag_of(args, "allow_mismatch"):
            msg = msg.replace("pass allow_mismatch=True", "pass --allow-mismatch")
        else:  # no override here: numbers on another model would be meaningless
            msg = msg.replace(", or pass allow_mismatch=True to proceed with a warning", "")
    if isinstance(err, ConfigError) and err.field:
        flag = _flag_of(args, err.field)
        if flag:
            if msg.startswith(err.field + " ") and not flag.endswith("*"):
                msg = flag + msg[len(err.field):]
            else:
                msg = f"argument {flag}: {msg}"
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _flag_of(args: argparse.Namespace, field: str) -> str | None:
    """The flag of a config field of the verb (``None`` if it has none)."""
    for spec in getattr(args, "config_args", []):
        flag = spec.flag(field)
        if flag:
            return flag
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-inversion``.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for invalid input (one line on stderr), 130 when interrupted.
        Any error that is not a :class:`~tl_inversion.errors.TLInversionError` propagates with
        its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_verb_of(argv)).parse_args(argv)
    show = warnings.showwarning

    def one_line(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        """This package's warnings (UserWarning) as one CLI line without a source echo."""
        if issubclass(category, UserWarning):
            print(f"tl-inversion {args.command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return int(args.func(args) or 0)
    except TLInversionError as e:
        print(f"tl-inversion {args.command}: error: {error_message(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (checkpoints are kept: run the same command to resume)" if args.command == "train" else ""
        print(f"\ntl-inversion {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
