"""``tl-inversion patch`` and ``tl-inversion path-patch`` (issue 20.10): activation and path
patching of a hypothesised circuit on a task's contrast pairs, mirroring
:func:`~tl_inversion.patching.patch_nodes`, :func:`~tl_inversion.patching.cumulative_patching`,
:func:`~tl_inversion.patching.plot_cumulative` and :func:`~tl_inversion.patching.path_patch`.

Nodes, groups and edges use the circuit notation of :mod:`tl_inversion.patching.notation`
(``"a1@:"``, ``"a0@tc + e_tok@tc"``, ``"a0@tc -> a1.0.v@:"``). The bootstrap and batching
flags have no default of their own: a flag not given leaves the library's default, which
``--help`` shows (read from the functions' signatures).
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any, Callable

from tl_inversion.cli.common import add_model_args, check_out_dir, load_model, require_at_least
from tl_inversion.errors import InputValueError

__all__ = ["CONTRASTS", "cmd_patch", "cmd_path_patch", "populate_patch", "populate_path_patch"]

#: ``{task: contrast kinds}``; the first is the default.
CONTRASTS = {"counting": ("flip", "random"), "addition": ("resample",)}


def _library_default(fn: Callable[..., Any], name: str) -> Any:
    """The default of a keyword of a library function."""
    return inspect.signature(fn).parameters[name].default


def _add_shared(p: argparse.ArgumentParser, fn: Callable[..., Any], run: Callable[..., Any]) -> None:
    """Model, task, contrast, data and bootstrap flags of both verbs (defaults from ``fn`` / ``run``)."""
    add_model_args(p)
    p.add_argument(
        "--task", default="counting", choices=sorted(CONTRASTS), help="registered task (default: %(default)s)"
    )
    p.add_argument(
        "--contrast",
        choices=sorted({c for cs in CONTRASTS.values() for c in cs}),
        help="how each clean input gets its contrast: counting: flip (one character changes the count, "
        "the paper's) or random (another input with another count); addition: resample (digits "
        "of --resample-digits redrawn) (default: the task's first)",
    )
    p.add_argument(
        "--resample-digits",
        nargs="+",
        metavar="DIGIT",
        help="addition: the operand digits to redraw, e.g. A1 B1 (see addition_resample_digits)",
    )
    p.add_argument(
        "--n-inputs",
        type=int,
        default=512,
        help="clean inputs: the first N of the task's test split (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="folder for the tables (CSV) and plots")
    for name, meaning, kind in (
        ("seed", "seed of the contrasts and of the bootstrap", int),
        ("n_boot", "bootstrap resamples of the confidence intervals", int),
        ("ci", "confidence level of the intervals", float),
    ):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{meaning} (default: {_library_default(fn, name)})",
        )
    p.add_argument(
        "--batch-size",
        type=int,
        default=argparse.SUPPRESS,
        help=f"inputs per forward pass (default: {_library_default(run, 'batch_size')})",
    )


def _library_kwargs(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The library keywords given on the command line (absent ones keep the library default)."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def _contrasts(args: argparse.Namespace) -> Any:
    """The task's clean/contrast pairs of the first ``--n-inputs`` test inputs."""
    from tl_inversion.patching import addition_resample_digits, counting_flip_contrasts, counting_random_contrasts
    from tl_inversion.tasks import task_data

    require_at_least("--n-inputs", args.n_inputs, 1)
    kind = args.contrast or CONTRASTS[args.task][0]
    if kind not in CONTRASTS[args.task]:
        raise InputValueError(
            f"--contrast {kind} is not one of task {args.task!r}'s: {', '.join(CONTRASTS[args.task])}"
        )
    tokens = task_data(args.task, "test")[: args.n_inputs]
    seed = getattr(args, "seed", None)  # None: the builders' own default generator
    if kind == "flip":
        return counting_flip_contrasts(tokens, generator=seed)
    if kind == "random":
        return counting_random_contrasts(tokens, generator=seed)
    if not args.resample_digits:
        raise InputValueError("--contrast resample needs --resample-digits (operand digits such as A1 B1)")
    return addition_resample_digits(tokens, list(args.resample_digits), generator=seed)


def _write(df: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)
    return path


def populate_patch(p: argparse.ArgumentParser) -> None:
    """The flags of ``patch``."""
    from tl_inversion.patching import cumulative_patching, patch_nodes, run_patching

    _add_shared(p, patch_nodes, run_patching)
    p.add_argument(
        "--groups",
        nargs="+",
        required=True,
        metavar="GROUP",
        help="node groups in forward order, each patched alone and cumulatively, e.g. "
        "'e_pos@tc,:' 'a0@tc + e_tok@tc' 'a0@:' 'a1@:'",
    )
    p.add_argument(
        "--direction",
        choices=["forward", "backward", "both"],
        default=argparse.SUPPRESS,
        help=f"order of the cumulative patching (default: {_library_default(cumulative_patching, 'direction')})",
    )
    p.add_argument(
        "--cumulative",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also patch the groups cumulatively: cumulative.csv and cumulative.png",
    )
    p.set_defaults(func=cmd_patch, config_args=[])


def cmd_patch(args: argparse.Namespace) -> int:
    """Activation patching of each group alone (patching.csv) and cumulatively (cumulative.csv/.png)."""
    from tl_inversion.patching import cumulative_patching, patch_nodes, plot_cumulative

    check_out_dir(args.out, "--out")
    contrasts = _contrasts(args)
    model = load_model(args)
    shared = _library_kwargs(args, "seed", "n_boot", "ci", "batch_size")
    out = Path(args.out)
    table = patch_nodes(model, list(args.groups), contrasts, **shared)
    print(table.to_string())
    written = [_write(table, out / "patching.csv")]
    if args.cumulative:
        cumulative = cumulative_patching(
            model, list(args.groups), contrasts, **shared, **_library_kwargs(args, "direction")
        )
        print(cumulative.to_string())
        written.append(_write(cumulative, out / "cumulative.csv"))
        fig = plot_cumulative(cumulative, title=f"cumulative patching ({args.task})")
        fig.savefig(out / "cumulative.png", dpi=120, bbox_inches="tight")
        written.append(out / "cumulative.png")
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def populate_path_patch(p: argparse.ArgumentParser) -> None:
    """The flags of ``path-patch``."""
    from tl_inversion.patching import path_patch, run_path_patching

    _add_shared(p, path_patch, run_path_patching)
    p.add_argument(
        "--edges",
        nargs="+",
        required=True,
        metavar="EDGES",
        help="edge sets, one table row each; edges patched together are joined by '&' (as the "
        "table labels them), e.g. 'a0@tc -> a1.0.v@tc' 'a0@tc -> a1.0.q@: & a0@tc -> a1.0.k@tc'",
    )
    p.add_argument(
        "--freeze-mlps",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="freeze the MLPs at their clean values in the first step (default: "
        f"{_library_default(run_path_patching, 'freeze_mlps')})",
    )
    p.set_defaults(func=cmd_path_patch, config_args=[])


def cmd_path_patch(args: argparse.Namespace) -> int:
    """Path patching of each edge set (path_patching.csv)."""
    from tl_inversion.patching import path_patch

    check_out_dir(args.out, "--out")
    edge_sets = [[e.strip() for e in spec.split("&") if e.strip()] for spec in args.edges]
    if not all(edge_sets):
        raise InputValueError(f"--edges has an empty edge set: {args.edges!r}")
    contrasts = _contrasts(args)
    model = load_model(args)
    table = path_patch(
        model, edge_sets, contrasts, **_library_kwargs(args, "seed", "n_boot", "ci", "batch_size", "freeze_mlps")
    )
    print(table.to_string())
    print(f"wrote {_write(table, Path(args.out) / 'path_patching.csv')}")
    return 0
