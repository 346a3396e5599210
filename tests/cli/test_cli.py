"""The command line: one-line errors with exit code 2, and the embedded demo end to end."""

from __future__ import annotations

import pytest
import torch

from tl_inversion.cli.app import main
from tl_inversion.demo import asset_dir, load_demo
from tl_inversion.inversion.queries import QueryFormatWarning
from tl_inversion.inversion.sampling import sample_preimage
from tl_inversion.tasks import counting


def _sample_args(**over):
    args = {"--model": str(asset_dir() / "probed"), "--bank": str(asset_dir() / "decoders"), "--task": "counting",
            "--query": "ddkdkkxdk|k:4", "--site": "blocks.1.attn.hook_result[0]", "--position": ":", "--n-repeats": "1"}
    args.update(over)
    return ["sample"] + [x for kv in args.items() for x in kv]


@pytest.mark.parametrize(
    "over, message",
    [
        ({"--model": "/nonexistent/model"}, "has no config.json"),
        ({"--bank": "/nonexistent/bank"}, "is not a decoder bank folder"),
        ({"--position": "colon"}, "named positions: 'c'"),
        ({"--query": "ddkdkkxdk|K:4"}, "are not input characters"),
        ({"--site": "blocks.1.hook_resid_pots"}, "(closest: 'blocks.1.hook_resid_post'); this bank covers"),
        ({"--top": "0"}, "--top must be >= 1"),
        ({"--query": "", "--position": ":"}, "position ':' does not exist in 1 of 1 rows"),
        ({"--processing": "none"}, "--allow-mismatch"),
    ],
)
def test_sample_errors_are_one_line(capsys, over, message):
    assert main(_sample_args(**over)) == 2
    err = capsys.readouterr().err
    assert message in err
    # one error line; a warning before it (the malformed query) is one CLI line too
    lines = err.splitlines()
    assert "Traceback" not in err and [x.split(":")[1] for x in lines].count(" error") == 1
    assert all(x.startswith("tl-inversion sample: ") for x in lines) and len(lines) <= 2


def test_sample_prints_the_preimage(capsys, tmp_path):
    html = tmp_path / "page.html"
    assert main(_sample_args(**{"--html": str(html)})) == 0
    out = capsys.readouterr().out
    assert "in_preimage" in out and html.exists()
    assert "blocks.1.attn.hook_result[0]" in html.read_text()


def test_malformed_query_warns():
    model, bank = load_demo()
    with pytest.warns(QueryFormatWarning, match="do(es)? not follow the counting format"):
        sample_preimage(bank, model, counting.make_task(), "ddkdkkxdk|k:5", "blocks.1.attn.hook_result[0]", ":",
                        n_repeats=1, batch_size=4)


def test_evaluate_writes_a_report(capsys, tmp_path):
    site = "blocks.1.attn.hook_result[0]"
    # [-1]: the last head (the demo model has one per layer), reported as [0]
    args = ["evaluate", "--model", str(asset_dir() / "probed"), "--bank", str(asset_dir() / "decoders"),
            "--task", "counting", "--out", str(tmp_path / "rep"), "--sites", "blocks.1.attn.hook_result[-1]",
            "--n-faithfulness", "6",
            "--n-queries", "2", "--positions", ":"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mean_faithfulness" in out
    text = (tmp_path / "rep" / "report.md").read_text()
    assert site in text and "query_count" in text


def test_evaluate_refuses_a_bank_given_twice(capsys, tmp_path):
    bank = str(asset_dir() / "decoders")
    args = ["evaluate", "--model", str(asset_dir() / "probed"), "--bank", bank, bank, "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "merged sites must be disjoint" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n-faithfulness", "-3"], "--n-faithfulness must be >= 1"),
        (["--n-queries", "0"], "--n-queries must be >= 1"),
        (["--max-candidates", "-1"], "--max-candidates must be 0 (all) or >= 2"),
        (["--task", "addition"], "trained on task 'counting', not 'addition'"),
        (["--completeness-condition", "blurred"], "needs a bank trained with train_noise_flag"),
    ],
)
def test_evaluate_bad_arguments_are_one_line(capsys, tmp_path, extra, message):
    args = ["evaluate", "--model", str(asset_dir() / "probed"), "--bank", str(asset_dir() / "decoders"),
            "--out", str(tmp_path / "r"), "--no-completeness"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("extra, message", [
    (["--sites", "blocks.1.hook_resid_pots"], "(closest: 'blocks.1.hook_resid_post'); this bank covers"),
    (["--completeness-condition", "blurred"], "needs a bank trained with train_noise_flag"),
])
def test_evaluate_and_sample_read_the_bank_before_the_model(capsys, tmp_path, extra, message):
    """A wrong site or condition is reported before the model is loaded: with a model folder
    that does not exist, the bank's error is the one that comes back."""
    args = ["evaluate", "--model", str(tmp_path / "no_model"), "--bank", str(asset_dir() / "decoders"),
            "--out", str(tmp_path / "r")] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "config.json" not in err
    if extra[0] == "--sites":
        assert main(_sample_args(**{"--model": str(tmp_path / "no_model"), "--site": extra[1]})) == 2
        err = capsys.readouterr().err
        assert message in err and "config.json" not in err


def test_evaluate_out_must_be_a_folder(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "sub"):
        args = ["evaluate", "--model", str(asset_dir() / "probed"), "--bank", str(asset_dir() / "decoders"),
                "--out", str(out)]
        assert main(args) == 2
        assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train-probed", "--out", "OUT", "--steps", "-4"], "steps must be >= 1, got -4"),
    (["train-probed", "--out", "OUT", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["train-probed", "--out", "OUT", "--test-limit", "-3"], "--test-limit must be >= 0"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT"], "give --sites"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT", "--preset", "paper", "--device", "tpu"],
     "unknown device 'tpu'"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT", "--preset", "paper", "--warmup-steps", "-3"],
     "--warmup-steps must be >= 0"),
    (["train-probed", "--out", "OUT", "--lr", "inf"], "lr must be a positive, finite learning rate"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT", "--preset", "paper", "--train-noise", "-0.1"],
     "--train-noise must be in [0, 1]"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT", "--preset", "paper", "--train-noise-flag"],
     "--train-noise-flag needs a train_noise > 0"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT", "--sites", "blocks.1.hook_resid_post",
      "--d-model", "8", "--init-bank", str(asset_dir() / "decoders")], "config differs from the source's in d_model"),
    (["train", "--model", str(asset_dir() / "probed"), "--out", "OUT", "--preset", "paper",
      "--init-bank", "NO_BANK"], "NO_BANK"),
    pytest.param(["train-probed", "--out", "OUT", "--device", "mps"], "no usable MPS backend",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
])
def test_training_commands_refuse_bad_numbers(capsys, tmp_path, argv, message):
    argv = [str(tmp_path / "out") if a == "OUT" else str(tmp_path / "no_bank") if a == "NO_BANK" else a for a in argv]
    message = message.replace("NO_BANK", str(tmp_path / "no_bank"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_ctrl_c_says_how_to_resume(capsys, monkeypatch):
    import tl_inversion.cli.train_verbs as verbs

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(verbs, "cmd_train", interrupted)
    assert main(["train", "--model", "M", "--out", "O", "--preset", "paper"]) == 130
    assert "interrupted (checkpoints are kept: run the same command to resume)" in capsys.readouterr().err


def test_select_sites_writes_a_bank_of_the_kept_sites(capsys, tmp_path, monkeypatch):
    from tl_inversion.decoding.bank import DecoderBank

    bank_dir = str(asset_dir() / "decoders")
    _, bank = load_demo()
    names = [str(s) for s in bank.sites]
    assert main(["select-sites", "--bank", bank_dir, "--drop-sites", names[0], "--out", str(tmp_path / "s")]) == 0
    assert f"2 sites ({', '.join(names[1:])})" in capsys.readouterr().out
    assert [str(s) for s in DecoderBank.load(tmp_path / "s").sites] == names[1:]
    assert main(["select-sites", "--bank", bank_dir, "--sites", names[2], "--save-dtype", "float16",
                 "--out", str(tmp_path / "one")]) == 0
    one = DecoderBank.load(tmp_path / "one")
    assert [str(s) for s in one.sites] == [names[2]]
    # without --save-dtype the input's own dtype is kept: float16 stays float16
    from safetensors import safe_open

    args = ["select-sites", "--bank", str(tmp_path / "one"), "--sites", names[2], "--out", str(tmp_path / "one16")]
    assert main(args) == 0
    with safe_open(str(tmp_path / "one16" / "decoders.safetensors"), "pt") as f:
        kinds = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in kinds and "F32" not in kinds
    ref = bank.lookup(names[2])[0].state_dict()
    for k, v in one.decoders[0].state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, ref[k].half().float(), rtol=0, atol=0)
    for args, message in (
        (["--sites", "blocks.9.hook_resid_post"], "no decoder for site 'blocks.9.hook_resid_post'"),
        (["--drop-sites", *names], "removes every site"),
    ):
        assert main(["select-sites", "--bank", bank_dir, *args, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    for out in (tmp_path / "s", tmp_path):
        assert main(["select-sites", "--bank", str(tmp_path / "s"), "--sites", names[1], "--out", str(out)]) == 2
        assert "is or holds the --bank folder" in capsys.readouterr().err
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    monkeypatch.chdir(keep)
    (keep / "dangling").symlink_to(tmp_path / "nowhere")
    for out in (keep, keep / "notes.txt", ".", "", keep / "dangling"):
        assert main(["select-sites", "--bank", bank_dir, "--sites", names[1], "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "exists and is not an empty folder" in err and err.count("\n") == 1
    assert (keep / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert main(["select-sites", "--bank", bank_dir, "--sites", names[1], "--out", str(tmp_path / "empty")]) == 0
    assert f"1 site ({names[1]})" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["select-sites", "--bank", bank_dir, "--sites", names[1], "--drop-sites", names[2], "--out", "x"])


def test_cli_warnings_are_one_line(capsys, tmp_path):
    """A merge of banks blurred differently warns in one CLI line, without a source echo."""
    from tl_inversion.decoding.bank import DecoderBank

    _, bank = load_demo()
    names = [str(s) for s in bank.sites]
    for i, (site, noise) in enumerate(((names[1], 0.0), (names[2], 0.1))):
        part = bank.select(site)
        part.meta["train_config"] = {**(part.meta.get("train_config") or {}), "train_noise": noise}
        part.save(tmp_path / f"p{i}")
    assert (
        main(
            [
                "select-sites",
                "--bank",
                str(tmp_path / "p0"),
                str(tmp_path / "p1"),
                "--drop-sites",
                names[1],
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err.startswith("tl-inversion select-sites: warning: merging banks trained with different noise")
    assert err.count("\n") == 1 and "UserWarning" not in err
    assert [str(s) for s in DecoderBank.load(tmp_path / "o").sites] == [names[2]]
