"""The command line imports nothing heavy until a verb runs (issue 20.6); ``import
tl_inversion`` is lazy too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_python_m_cli_help_works_without_heavy_imports():
    run = subprocess.run([sys.executable, "-m", "tl_inversion.cli", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "usage: tl-inversion" in run.stdout
    for verb in ("demo", "train-probed", "train", "sample", "select-sites", "evaluate", "patch", "path-patch"):
        assert verb in run.stdout
    code = ("import sys, contextlib, io\n"
            "from tl_inversion.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(sorted(m for m in ('torch', 'transformer_lens', 'pandas') if m in sys.modules))\n")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_building_every_verbs_parser_does_not_import_transformer_lens():
    code = ("import sys, contextlib, io\n"
            "from tl_inversion.cli.app import build_parser, main\n"
            "build_parser()\n"
            "for verb in ('train', 'sample', 'evaluate', 'demo', 'patch', 'path-patch'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main([verb, '--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print('transformer_lens' in sys.modules)\n")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_a_missing_bank_fails_without_importing_transformer_lens(tmp_path):
    code = ("import sys\n"
            "from tl_inversion.cli import main\n"
            f"rc = main(['sample', '--model', {str(tmp_path / 'm')!r}, '--bank', {str(tmp_path / 'b')!r},"
            " '--query', 'q', '--site', 'blocks.0.hook_resid_post', '--position', ':'])\n"
            "print(rc, 'transformer_lens' in sys.modules)\n")
    run = _python(code)
    assert run.stdout.strip() == "2 False", run.stderr
    assert "is not a decoder bank folder" in run.stderr and run.stderr.count("\n") == 1


def test_import_tl_inversion_is_lazy():
    code = ("import sys, json, tl_inversion\n"
            "before = 'torch' in sys.modules\n"
            "names = sorted(tl_inversion.__all__)\n"
            "missing = [n for n in names if n not in dir(tl_inversion)]\n"
            "resolved = {n: getattr(tl_inversion, n).__name__ for n in names}\n"
            "print(json.dumps([before, missing, resolved, 'torch' in sys.modules]))\n")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    before, missing, resolved, after = json.loads(run.stdout)
    assert before is False and missing == [] and after is True
    # every name exported before the package went lazy, plus the configs
    for name in ("Decoder", "DecoderBank", "DecoderConfig", "EvalPlan", "EvaluationReport", "ModelMismatchError",
                 "PositionError", "PreimageResult", "Site", "SiteError", "TrainConfig", "evaluate",
                 "feature_consistency", "get_task", "harvest", "load_hf_gpt2", "measure_faithfulness", "parse_site",
                 "sample_many", "sample_preimage", "task_data", "train", "validate_site", "SampleConfig",
                 "EvaluateConfig"):
        assert resolved[name] == name


def test_lazy_names_are_the_defining_modules_objects():
    import tl_inversion
    from tl_inversion.inversion.sampling import sample_preimage
    from tl_inversion.training.trainer import train

    assert tl_inversion.sample_preimage is sample_preimage and tl_inversion.train is train
    assert tl_inversion.tasks.get_task is tl_inversion.get_task
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tl_inversion.nope
