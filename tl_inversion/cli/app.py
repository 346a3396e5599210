"""``tl-inversion``: the command line, mirroring the Python API.

    tl-inversion demo                       # embedded counting model + decoders, offline
    tl-inversion train-probed --task counting --out runs/probed
    tl-inversion train --model runs/probed --task counting --preset paper --out runs/dec
    tl-inversion sample --model runs/probed --bank runs/dec/bank --task counting \\
        --query "aabca|a:3" --site "blocks.1.attn.hook_result[0]" --position :
    tl-inversion evaluate --model runs/probed --bank runs/dec/bank --task counting --out runs/report
    tl-inversion select-sites --bank runs/dec/bank --drop-sites "blocks.0.hook_resid_pre" --out runs/some

Every option maps to a field of :class:`~tl_inversion.training.TrainConfig`,
:class:`~tl_inversion.probed.ProbedConfig`, :class:`~tl_inversion.report.EvalPlan` or an
argument of :func:`~tl_inversion.sampling.sample_preimage` / :func:`~tl_inversion.report.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence
from tl_inversion.errors import InputValueError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="folder of a Hugging Face GPT-2 checkpoint (config.json + weights)")
    p.add_argument("--model-class", choices=["hooked", "bridge"], default=None, help="default: hooked on TL<4, else bridge")
    p.add_argument("--processing", choices=["default", "none", "compat"], default=None,
                   help="weight processing (default: 'default' for hooked, 'compat' for bridge)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _load_model(args: argparse.Namespace) -> Any:
    from tl_inversion.model.loading import load_hf_gpt2

    return load_hf_gpt2(args.model, args.model_class, args.processing, device=args.device)


def _sites(args: argparse.Namespace, model: Any) -> list[str]:
    from tl_inversion.model.sites import paper_addition_sites, paper_counting_sites

    if args.sites:
        return list(args.sites)
    if args.preset == "paper-counting" or (args.preset == "paper" and args.task == "counting"):
        return [str(s) for s in paper_counting_sites(model.cfg.n_layers, model.cfg.n_heads)]
    if args.preset == "paper-addition" or (args.preset == "paper" and args.task == "addition"):
        return [str(s) for s in paper_addition_sites(model.cfg.n_layers, model.cfg.n_heads)]
    raise InputValueError("give --sites (site strings, e.g. 'blocks.1.attn.hook_result[0]') or --preset "
                     "(paper, paper-counting, paper-addition)")


def cmd_train_probed(args: argparse.Namespace) -> int:
    from tl_inversion.training.probed import ProbedConfig, train_probed_model
    from tl_inversion.tasks import get_task, task_data

    task = get_task(args.task)
    if args.test_limit < 0:
        raise InputValueError(f"--test-limit must be >= 0 (0: the whole test split), got {args.test_limit}")
    cfg = ProbedConfig(n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
    test = task_data(args.task, "test")
    if args.test_limit:
        test = test[: args.test_limit]
    info = train_probed_model(task, task_data(args.task, "train"), test, task.answer_mask, cfg, args.out)
    print(json.dumps(info, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tl_inversion.tasks import get_task, task_data
    from tl_inversion.training.trainer import TrainConfig, train

    model = _load_model(args)
    task = get_task(args.task)
    decoder = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads}
    cfg = TrainConfig(
        sites=_sites(args, model), topology=args.topology, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, schedule=args.schedule, eval_every=args.eval_every, eval_n=args.eval_n,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device, rebalance=not args.no_rebalance,
        decoder=decoder, time_limit_s=args.time_limit, stack=not args.no_stack, compile=args.compile,
        train_noise=args.train_noise, train_noise_shape=args.train_noise_shape, train_noise_flag=args.train_noise_flag,
        init_banks=args.init_bank or [],
    )
    import torch

    result = train(model, task, task_data(args.task, "train"), task_data(args.task, "test"), cfg, out_dir=args.out,
                   resume=not args.no_resume, save_dtype=getattr(torch, args.save_dtype))
    print(result.faithfulness.to_string())
    if result.steps_this_call == 0:
        print(f"nothing to train: the run in {args.out} had already reached step {result.bank.meta.get('steps')} "
              f"(--steps {args.steps}); mean faithfulness {result.faithfulness['faithfulness'].mean():.4f}; "
              f"bank: {Path(args.out) / 'bank'}")
    else:
        print(f"mean faithfulness {result.faithfulness['faithfulness'].mean():.4f}; {result.steps_this_call} steps, "
              f"{result.samples_per_second:.0f} inputs/s, {result.seconds:.1f} s; bank: {Path(args.out) / 'bank'}")
    return 0


def _read_banks(paths: Sequence[str]) -> tuple[list[Any], Any]:
    """The banks of the folders (on the CPU, not yet checked against a model) and one bank of
    them all (the folder's own, or DecoderBank.merge of several): read before the model is
    loaded, so a wrong bank, site or condition is reported at once."""
    from tl_inversion.decoding.bank import DecoderBank

    banks = [DecoderBank.load(p) for p in paths]
    return banks, banks[0] if len(banks) == 1 else DecoderBank.merge(banks)


def _attach_bank(banks: Sequence[Any], bank: Any, model: Any, allow_mismatch: bool = False) -> Any:
    """``bank`` checked against the probed model (each folder's fingerprint) and moved to its device."""
    from tl_inversion.model.activations import model_device

    for b in banks:
        b.check_model(model, allow_mismatch=allow_mismatch)
    return bank.to(model_device(model))


def cmd_sample(args: argparse.Namespace) -> int:
    from tl_inversion.inversion.sampling import sample_preimage
    from tl_inversion.tasks import get_task

    if args.top < 1:
        raise InputValueError(f"--top must be >= 1 (rows to print), got {args.top}")
    banks, bank = _read_banks(args.bank)
    bank.lookup(args.site)
    model = _load_model(args)
    bank = _attach_bank(banks, bank, model, allow_mismatch=args.allow_mismatch)
    result = sample_preimage(bank, model, get_task(args.task), args.query, args.site, args.position,
                             epsilon=args.epsilon, metric=args.metric, n_repeats=args.n_repeats,
                             batch_size=args.batch_size, seed=args.seed, allow_mismatch=args.allow_mismatch)
    print(result.summary())
    print(result.df[["text", "distance", "matched_pos", "in_preimage", "valid", "temperature", "noise"]].head(args.top).to_string())
    if args.html:
        result.to_html(args.html)
        print(f"wrote {args.html}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tl_inversion.evaluation.report import EvalPlan, default_plan, evaluate
    from tl_inversion.tasks import get_task, task_data

    _check_out_dir(args.out, "--out")
    for flag, value, low in (("--n-faithfulness", args.n_faithfulness, 1), ("--n-queries", args.n_queries, 1),
                             ("--n-repeats", args.n_repeats, 1), ("--n-samples", args.n_samples, 0)):
        if value < low:
            raise InputValueError(f"{flag} must be >= {low}, got {value}")
    if args.max_candidates == 1 or args.max_candidates < 0:
        raise InputValueError(f"--max-candidates must be 0 (all) or >= 2, got {args.max_candidates}")
    if args.epsilon is not None and not args.epsilon > 0:
        raise InputValueError(f"--epsilon must be positive, got {args.epsilon}")
    blurred = {"auto": None, "exact": False, "blurred": True}[args.completeness_condition]
    banks, bank = _read_banks(args.bank)
    for site in args.sites or []:
        bank.lookup(site)
    if blurred:
        bank.check_blurred(blurred)
    model = _load_model(args)
    bank = _attach_bank(banks, bank, model)
    task = get_task(args.task)
    try:
        plan = default_plan(args.task)
    except ValueError:
        if not args.positions:
            raise InputValueError(f"task {args.task!r} has no default plan: give --positions") from None
        plan = EvalPlan(positions=[])
    if args.positions:
        plan = replace(plan, positions=list(args.positions))
    if args.completeness_queries is not None:
        plan = replace(plan, completeness_queries=list(args.completeness_queries))
    if args.completeness_positions is not None:
        plan = replace(plan, completeness_positions=list(args.completeness_positions))
    if args.no_completeness:
        plan = replace(plan, completeness_queries=[], completeness_positions=[])
    report = evaluate(model, bank, task, task_data(args.task, "test"), plan, sites=args.sites,
                      n_faithfulness=args.n_faithfulness, n_queries=args.n_queries, n_repeats=args.n_repeats,
                      max_candidates=args.max_candidates or None, n_samples=args.n_samples, epsilon=args.epsilon,
                      metric=args.metric, seed=args.seed, blurred=blurred)
    path = report.write(args.out)
    print(report.faithfulness[["faithfulness", "pool_in_preimage", "valid"]].to_string(float_format=lambda x: f"{x:.3f}"))
    print(json.dumps(report.summary(), indent=2))
    print(f"wrote {path}")
    return 0


def _check_out_dir(path: str, flag: str) -> None:
    """A report folder: refuse a path that is (or lies under) an existing file, before any work."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise InputValueError(f"{flag} must be a folder (existing or new), but {q} is a file")
            break


def _stored_dtype(folder: str) -> str:
    """The floating dtype a bank folder's weights are stored in (``"float32"`` if none is)."""
    from safetensors import safe_open

    from tl_inversion.decoding.bank import WEIGHTS

    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
    with safe_open(str(Path(folder) / WEIGHTS), "pt") as f:
        for key in f.keys():
            kind = f.get_slice(key).get_dtype()
            if kind in names:
                return names[kind]
    return "float32"


def cmd_select_sites(args: argparse.Namespace) -> int:
    import torch

    out = Path(args.out).resolve()
    for b in args.bank:
        if out == Path(b).resolve() or out in Path(b).resolve().parents:
            raise InputValueError(f"--out {args.out!r} is or holds the --bank folder {b}; write the selection to a new folder")
    if Path(args.out).is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise InputValueError(f"--out {args.out!r} exists and is not an empty folder; select-sites writes a new folder "
                         "and replaces nothing: give a new path")
    _, bank = _read_banks(args.bank)
    bank = bank.select(args.sites, drop=args.drop_sites)
    stored = {_stored_dtype(b) for b in args.bank}
    dtype = args.save_dtype or (stored.pop() if len(stored) == 1 else "float32")
    bank.save(args.out, dtype=getattr(torch, dtype))
    n = len(bank.sites)
    print(f"wrote {args.out}: {n} site{'' if n == 1 else 's'} ({', '.join(str(s) for s in bank.sites)})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tl_inversion.demo import run_demo

    if args.html and Path(args.html).is_dir():
        raise InputValueError(f"--html must be a file path, but {args.html} is a folder")
    if args.top < 1:
        raise InputValueError(f"--top must be >= 1, got {args.top}")

    run_demo(html=args.html, n_repeats=args.n_repeats, top=args.top)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tl-inversion``."""
    parser = argparse.ArgumentParser(prog="tl-inversion", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sample preimages with the embedded counting model and decoders (offline, CPU)")
    p.add_argument("--html", default="tl_inversion_demo.html", help="where to write the HTML page")
    p.add_argument("--n-repeats", type=int, default=1, help="repeats of the 4-setting schedule (paper: 4)")
    p.add_argument("--top", type=int, default=8, help="rows to print per query")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-probed", help="train a probed model on a task (this project's recipe)")
    p.add_argument("--task", default="counting", help="counting or addition")
    p.add_argument("--out", required=True, help="folder for the model (config.json, model.safetensors, recipe.json)")
    p.add_argument("--n-layers", type=int, default=2, help="layers of the probed model (default: %(default)s)")
    p.add_argument("--d-model", type=int, default=64, help="residual width (default: %(default)s)")
    p.add_argument("--n-heads", type=int, default=1, help="attention heads per layer (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=512, help="inputs per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--test-limit", type=int, default=0, help="measure test accuracy on the first N test inputs (0: all)")
    p.set_defaults(func=cmd_train_probed)

    p = sub.add_parser("train", help="train decoders for sites of a probed model")
    _add_model_args(p)
    p.add_argument("--task", default="counting", help="registered task: counting or addition (default: counting); IOI and your own texts: Python API")
    p.add_argument("--sites", nargs="+", help="site strings, e.g. 'blocks.1.attn.hook_result[0]'")
    p.add_argument("--preset", choices=["paper", "paper-counting", "paper-addition"], help="the paper's site set")
    p.add_argument("--topology", choices=["per_hook", "shared"], default="per_hook",
                   help="one decoder per site, or one site-conditioned decoder for all (the paper's) "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="inputs per step; each feeds every per-hook decoder (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default: %(default)s)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="after warm-up: constant, or cosine decay to 10%% over --steps or --time-limit "
                        "(default: %(default)s)")
    p.add_argument("--train-noise", type=float, default=0.0,
                   help="blur each training activation by noise of this level, in units of the distance D, in [0, 1] "
                        "(< 1 for --train-noise-shape preimage; 0: exact activations, as the paper) (default: %(default)s)")
    p.add_argument("--train-noise-shape", choices=["gaussian", "ball", "preimage"], default="gaussian",
                   help="gaussian: norm uniform up to the level; ball: uniform in the ball of that radius; "
                        "preimage: the decoder learns the uniform distribution over the inputs within the level "
                        "(the epsilon-preimage when the level is epsilon; tl_inversion.noise) (default: %(default)s)")
    p.add_argument("--train-noise-flag", action="store_true",
                   help="with --train-noise > 0: blur only a random half of the rows and tell the decoder which (a "
                        "noise-flag input); one decoder then samples from the exact condition and scores completeness "
                        "with the blurred one (evaluate --completeness-condition)")
    p.add_argument("--eval-every", type=int, default=500,
                   help="steps between faithfulness measurements (0: only at the end) (default: %(default)s)")
    p.add_argument("--eval-n", type=int, default=200,
                   help="held-out activations per site for the faithfulness rate (paper: 200) (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between checkpoints (0: only at the end) (default: %(default)s)")
    p.add_argument("--d-model", type=int, default=256, help="decoder width (paper: 256) (default: %(default)s)")
    p.add_argument("--n-layers", type=int, default=2, help="decoder layers (paper: 2) (default: %(default)s)")
    p.add_argument("--n-heads", type=int, default=4, help="decoder attention heads (paper: 4) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and positions (default: %(default)s)")
    p.add_argument("--no-rebalance", action="store_true",
                   help="shared topology: sample sites uniformly instead of favouring low-faithfulness sites")
    p.add_argument("--no-stack", action="store_true",
                   help="per_hook: train decoders one by one instead of as one vmapped module (same mathematics)")
    p.add_argument("--compile", action="store_true",
                   help="compile each step's loss with torch.compile (CUDA: Triton; slow first steps)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue from checkpoints in --out (error if there are any)")
    p.add_argument("--init-bank", nargs="+", metavar="BANK",
                   help="warm start: begin from the decoders of these bank folders (merged; they must cover the run's sites "
                        "with the same decoder shape, noise flag, probed model and task; not the --out folder's own "
                        "bank) with a fresh optimizer and schedule; ignored when --out resumes")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop once the run has trained this many seconds, over all calls (0: no limit)")
    p.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype of the final bank on disk (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, log.jsonl, config.json and the final bank/")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample and verify the preimage of one query")
    _add_model_args(p)
    p.add_argument("--bank", required=True, nargs="+", help="folder of a saved decoder bank (several: merged)")
    p.add_argument("--task", default="counting", help="registered task: counting or addition (default: counting); IOI and your own texts: Python API")
    p.add_argument("--query", required=True, help="input text without B/E/P, e.g. 'ddkdkkxdk|k:4'")
    p.add_argument("--site", required=True, help="a site of the bank, e.g. 'blocks.1.attn.hook_result[0]'")
    p.add_argument("--position", required=True, help="index or a task-named position such as ':'")
    p.add_argument("--epsilon", type=float, default=0.1,
                   help="preimage threshold on the distance D (paper: 0.1) (default: %(default)s)")
    p.add_argument("--metric", choices=["l2", "cosine"], default="l2",
                   help="D: normalised L2 (paper) or 1 - cosine (default: %(default)s)")
    p.add_argument("--n-repeats", type=int, default=4,
                   help="repeats of the 4-setting temperature/noise schedule (paper: 4) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per setting and repeat (paper: 64) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--top", type=int, default=20, help="rows to print, nearest first (default: %(default)s)")
    p.add_argument("--html", default=None, help="also write the samples as an HTML page to this file")
    p.add_argument("--allow-mismatch", action="store_true", help="warn instead of failing on a probed-model mismatch")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("select-sites", help="save some sites of one or more banks as a new bank (to merge runs site by site)")
    p.add_argument("--bank", required=True, nargs="+", help="folder of a saved decoder bank (several: merged first)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sites", nargs="+", help="the sites to keep")
    which.add_argument("--drop-sites", nargs="+", help="the sites to leave out")
    p.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="dtype of the new bank on disk (default: the --bank folders' own when they agree, "
                        "else float32)")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the new bank; nothing is replaced")
    p.set_defaults(func=cmd_select_sites)

    p = sub.add_parser("evaluate", help="faithfulness, feature consistency and completeness per site and position: a report")
    _add_model_args(p)
    p.add_argument("--bank", required=True, nargs="+", help="folder of a saved decoder bank (several: merged)")
    p.add_argument("--task", default="counting", help="registered task: counting or addition (default: counting); IOI and your own texts: Python API")
    p.add_argument("--out", required=True, help="report folder (report.md, CSV files, PNG plots); a report already there is overwritten, "
                   "and its completeness / consistency files are removed when this evaluation has none")
    p.add_argument("--sites", nargs="+", help="a subset of the bank's sites (default: all)")
    p.add_argument("--positions", nargs="+", help="positions (task names or indices); default: the task's plan")
    p.add_argument("--n-faithfulness", type=int, default=200, help="held-out activations per site and position (paper 200)")
    p.add_argument("--n-queries", type=int, default=16, help="pool queries per site and position")
    p.add_argument("--n-repeats", type=int, default=1, help="repeats of the 4-setting schedule per pool (1: 256 samples)")
    p.add_argument("--completeness-queries", nargs="*",
                   help="query texts whose true preimage is enumerated (every input of the task's space is run "
                        "through the model per site: addition 810,000, counting 390,000; slow on CPU: a few minutes "
                        "per site on 2 cores)")
    p.add_argument("--completeness-positions", nargs="*", help="positions of the completeness queries (needed with them)")
    p.add_argument("--no-completeness", action="store_true", help="skip the completeness stage")
    p.add_argument("--max-candidates", type=int, default=20000, help="candidates scored by the decoder per query (0: all)")
    p.add_argument("--n-samples", type=int, default=256, help="decoder samples per completeness query (recall)")
    p.add_argument("--completeness-condition", choices=["auto", "exact", "blurred"], default="auto",
                   help="noise flag of the completeness condition (banks trained with --train-noise-flag); auto: "
                        "blurred when the bank has the flag (default: %(default)s)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="preimage threshold on D (default: 0.1 for l2, 0.25 for cosine)")
    p.add_argument("--metric", choices=["l2", "cosine"], default="l2", help="D (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of queries and samples (default: %(default)s)")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-inversion``; errors of bad input print one line and exit 2."""
    from tl_inversion.decoding.bank import ModelMismatchError
    from tl_inversion.model.loading import LoadError
    from tl_inversion.model.sites import SiteError
    from tl_inversion.tasks.base import PositionError

    args = build_parser().parse_args(argv)

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        """This package's warnings (UserWarning) as one CLI line without a source echo."""
        if issubclass(category, UserWarning):
            print(f"tl-inversion {args.command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return int(args.func(args) or 0)
    except ModelMismatchError as e:
        if hasattr(args, "allow_mismatch"):
            msg = str(e).replace("pass allow_mismatch=True", "pass --allow-mismatch")
        else:  # no override here: numbers on another model would be meaningless
            msg = str(e).replace(", or pass allow_mismatch=True to proceed with a warning", "")
        print(f"tl-inversion {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except (SiteError, PositionError, LoadError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"tl-inversion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (checkpoints are kept: run the same command to resume)" if args.command == "train" else ""
        print(f"\ntl-inversion {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
