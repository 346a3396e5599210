"""The verbs' flags come from the configs: every field has a flag, ``--help`` shows its
default, old flag names still work, and the CLI's defaults are the library's."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from tl_inversion.cli.app import build_parser, main
from tl_inversion.decoding.config import DecoderConfig
from tl_inversion.demo import asset_dir
from tl_inversion.evaluation.config import EvaluateConfig
from tl_inversion.inversion.config import SampleConfig
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.probed import ProbedConfig

SET_BY_BANK = {"vocab_size", "n_ctx", "d_act", "bos_id", "eos_id", "pad_id", "n_sites"}


def _shown(value):
    """A default as the help should print it (written out here, not taken from the CLI)."""
    if isinstance(value, list):
        return " ".join(",".join(str(x) for x in v) if isinstance(v, tuple) else str(v) for v in value) or "empty"
    return "none" if value is None else str(value)


def _help_lines(verb, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "3000")  # one line per flag
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    entries, key = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.strip().startswith("--"):
            key = line.split()[0].rstrip(",")
            entries[key] = line
        elif line.startswith("   ") and key:  # the help of a long flag, on the next line
            entries[key] += " " + line.strip()
        else:
            key = None
    return entries


def _defaults(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize("verb, cls", [("train-probed", ProbedConfig), ("train", TrainConfig),
                                       ("sample", SampleConfig), ("evaluate", EvaluateConfig)])
def test_every_field_is_a_flag_with_its_default_in_help(verb, cls, monkeypatch, capsys):
    lines = _help_lines(verb, monkeypatch, capsys)
    defaults = _defaults(cls)
    for f in dataclasses.fields(cls):
        if f.name == "decoder":
            continue
        flag = "--" + f.name.replace("_", "-")
        assert flag in lines, f"{cls.__name__}.{f.name} has no flag {flag}"
        if f.name in defaults:
            assert f"(default: {_shown(defaults[f.name])})" in lines[flag], lines[flag]
    if cls is TrainConfig:  # the decoder's fields, flattened
        for f in dataclasses.fields(DecoderConfig):
            flag = "--decoder-" + f.name.replace("_", "-")
            if f.name in SET_BY_BANK:
                assert flag not in lines
                continue
            default = defaults["decoder"].get(f.name, f.default)
            assert f"(default: {_shown(default)})" in lines[flag], lines[flag]


def test_help_text_comes_from_the_field_docs(monkeypatch, capsys):
    lines = _help_lines("train", monkeypatch, capsys)
    assert "AdamW weight decay" in lines["--weight-decay"]
    assert "--no-stack" in lines["--stack"]
    assert "--no-rebalance" in lines["--rebalance"]
    lines = _help_lines("sample", monkeypatch, capsys)
    assert "{l2,cosine}" in lines["--metric"]


def _train_config(argv):
    args = build_parser(["train"]).parse_args(["train", "--model", "M", "--out", "O", *argv])
    return args.config_args[0].build(args, sites=["blocks.0.hook_resid_post"])


def test_train_flags_old_and_new():
    assert _train_config([]) == TrainConfig(sites=["blocks.0.hook_resid_post"])
    cfg = _train_config(["--time-limit", "5", "--d-model", "8", "--n-heads", "2", "--no-rebalance", "--no-stack",
                         "--compile", "--init-bank", "A", "B", "--train-noise", "0.1", "--train-noise-flag"])
    assert cfg.time_limit_s == 5.0 and cfg.rebalance is False and cfg.stack is False and cfg.compile is True
    assert cfg.init_banks == ["A", "B"] and cfg.train_noise == 0.1 and cfg.train_noise_flag is True
    # the decoder dict keeps TrainConfig's default entries that were not given
    assert cfg.decoder == {"d_model": 8, "n_layers": 2, "n_heads": 2}
    cfg = _train_config(["--weight-decay", "0.1", "--grad-clip", "0.5", "--bos-prob", "0.02", "--epsilon", "0.2",
                         "--metric", "cosine", "--decoder-dropout", "0.1", "--decoder-n-cond-blocks", "3",
                         "--decoder-d-mlp", "64", "--keep-checkpoints", "4", "--no-amp",
                         "--rebalance-temperature", "3"])
    assert (cfg.weight_decay, cfg.grad_clip, cfg.bos_prob, cfg.epsilon, cfg.metric) == (0.1, 0.5, 0.02, 0.2, "cosine")
    assert cfg.decoder == {"d_model": 256, "n_layers": 2, "n_heads": 4, "dropout": 0.1, "n_cond_blocks": 3,
                           "d_mlp": 64}
    assert cfg.keep_checkpoints == 4 and cfg.amp is False and cfg.rebalance_temperature == 3.0


def test_train_probed_flags():
    args = build_parser(["train-probed"]).parse_args(
        ["train-probed", "--out", "O", "--d-mlp", "32", "--weight-decay", "0", "--warmup-steps", "7", "--n-heads", "2"])
    cfg = args.config_args[0].build(args)
    assert (cfg.d_mlp, cfg.weight_decay, cfg.warmup_steps, cfg.n_heads) == (32, 0.0, 7, 2)
    assert cfg.steps == ProbedConfig().steps


def test_sample_and_evaluate_configs_have_the_library_defaults():
    from tl_inversion.evaluation.evaluate import evaluate
    from tl_inversion.inversion.sampling import PAPER_SCHEDULE, sample_preimage

    params = inspect.signature(sample_preimage).parameters
    for name, value in SampleConfig().kwargs().items():
        assert params[name].default == value, name
    assert set(SampleConfig().kwargs()) == {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    params = inspect.signature(evaluate).parameters
    for name, value in EvaluateConfig().evaluate_kwargs().items():
        assert params[name].default == value, name
    assert tuple(EvaluateConfig().schedule) == PAPER_SCHEDULE
    assert EvaluateConfig(max_candidates=0).evaluate_kwargs()["max_candidates"] is None
    blurred = [EvaluateConfig(completeness_condition=c).blurred for c in ("auto", "exact", "blurred")]
    assert blurred == [None, False, True]


def test_demo_defaults_are_run_demos():
    from tl_inversion.cli.sample_verbs import DEMO_DEFAULTS
    from tl_inversion.demo import run_demo

    params = inspect.signature(run_demo).parameters
    assert DEMO_DEFAULTS == {k: params[k].default for k in DEMO_DEFAULTS}
    args = build_parser(["demo"]).parse_args(["demo"])
    assert (args.html, args.n_repeats, args.top) == ("tl_inversion_demo.html", 1, 8)


def test_sample_cosine_uses_the_librarys_epsilon(capsys, monkeypatch):
    """The drift this fixes: the CLI used 0.1 for cosine while the library uses 0.25."""
    import tl_inversion.inversion.sampling as sampling
    from tl_inversion.demo import load_demo
    from tl_inversion.inversion.distance import default_epsilon
    from tl_inversion.tasks import counting

    real, seen = sampling.sample_preimage, []

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(result.epsilon)
        return result

    monkeypatch.setattr(sampling, "sample_preimage", spy)
    argv = [
        "sample",
        "--model",
        str(asset_dir() / "probed"),
        "--bank",
        str(asset_dir() / "decoders"),
        "--query",
        "ddkdkkxdk|k:4",
        "--site",
        "blocks.1.attn.hook_result[0]",
        "--position",
        ":",
        "--n-repeats",
        "1",
        "--batch-size",
        "4",
        "--metric",
        "cosine",
        "--no-colour",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    model, bank = load_demo()
    direct = real(
        bank,
        model,
        counting.make_task(),
        "ddkdkkxdk|k:4",
        "blocks.1.attn.hook_result[0]",
        ":",
        metric="cosine",
        n_repeats=1,
        batch_size=4,
        colour=False,
    )
    assert seen == [direct.epsilon] == [default_epsilon("cosine")] == [0.25]
    assert "epsilon=0.25, metric='cosine'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n-repeats", "0"], "--n-repeats must be >= 1"),
        (["--epsilon", "-1"], "--epsilon must be a positive distance"),
        (["--schedule", "1,-1"], "--schedule pairs need a temperature >= 0"),
    ],
)
def test_sample_config_errors_name_the_flag(capsys, extra, message):
    argv = [
        "sample",
        "--model",
        "no_model",
        "--bank",
        "no_bank",
        "--query",
        "q",
        "--site",
        "s",
        "--position",
        ":",
    ] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-inversion sample: error: ") and message in err and err.count("\n") == 1
