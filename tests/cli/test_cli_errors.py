"""Which errors the command line turns into one line: only tl_inversion's own
(TLInversionError, exit 2); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tl_inversion.cli.sample_verbs as sample_verbs
import tl_inversion.cli.train_verbs as train_verbs
from tl_inversion.cli.app import main
from tl_inversion.errors import ConfigError, InputValueError, LoadError

SAMPLE = ["sample", "--model", "M", "--bank", "B", "--query", "q", "--site", "s", "--position", ":"]


def _raising(err):
    def command(args):
        raise err

    return command


def test_an_internal_bug_propagates(monkeypatch):
    monkeypatch.setattr(sample_verbs, "cmd_demo", _raising(ZeroDivisionError("division by zero")))
    with pytest.raises(ZeroDivisionError):
        main(["demo"])
    # a plain ValueError is not input validation either
    monkeypatch.setattr(sample_verbs, "cmd_demo", _raising(ValueError("some bug")))
    with pytest.raises(ValueError, match="some bug"):
        main(["demo"])


def test_an_internal_bug_prints_its_traceback():
    code = ("import sys, tl_inversion.cli.sample_verbs as v\n"
            "v.cmd_demo = lambda args: 1 / 0\n"
            "from tl_inversion.cli import main\n"
            "sys.exit(main(['demo']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "ZeroDivisionError" in run.stderr


@pytest.mark.parametrize("err", [InputValueError("bad value\nvalid: 1, 2"), LoadError("cannot load x")])
def test_library_errors_are_one_line_with_status_2(monkeypatch, capsys, err):
    monkeypatch.setattr(sample_verbs, "cmd_demo", _raising(err))
    assert main(["demo"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith("tl-inversion demo: error: ")
    assert "Traceback" not in err_text
    first = str(err).splitlines()[0]
    assert first in err_text


@pytest.mark.parametrize("verb_args, module, name, err, expected", [
    (SAMPLE, sample_verbs, "cmd_sample", ConfigError("n_repeats must be >= 1, got 0", field="n_repeats"),
     "tl-inversion sample: error: --n-repeats must be >= 1, got 0"),
    (SAMPLE, sample_verbs, "cmd_sample", ConfigError("unknown distance 'x'", field="metric"),
     "tl-inversion sample: error: argument --metric: unknown distance 'x'"),
    (SAMPLE, sample_verbs, "cmd_sample", ConfigError("no such field here", field="not_a_field"),
     "tl-inversion sample: error: no such field here"),
    (["train", "--model", "M", "--out", "O"], train_verbs, "cmd_train",
     ConfigError("d_model must be a multiple of n_heads", field="d_model"),
     "tl-inversion train: error: --decoder-d-model must be a multiple of n_heads"),
    (["train", "--model", "M", "--out", "O"], train_verbs, "cmd_train",
     ConfigError("time_limit_s must be >= 0", field="time_limit_s"),
     "tl-inversion train: error: --time-limit-s must be >= 0"),
    (["train-probed", "--out", "O"], train_verbs, "cmd_train_probed",
     ConfigError("d_model (6) must be a multiple of n_heads (4)", field="d_model"),
     "tl-inversion train-probed: error: --d-model (6) must be a multiple of n_heads (4)"),
])
def test_config_errors_name_the_flag(monkeypatch, capsys, verb_args, module, name, err, expected):
    monkeypatch.setattr(module, name, _raising(err))
    assert main(verb_args) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_real_config_errors_name_the_flag(capsys):
    assert main(["train-probed", "--out", "O", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-inversion train-probed: error: ") and "steps must be >= 1, got 0" in err
