"""Training: resume after a kill reproduces the uninterrupted run; positions; rebalancing."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED
from model_files import load_counting_shaped

from tl_inversion.errors import ConfigError
from tl_inversion.model.sites import Site
from tl_inversion.tasks import counting
from tl_inversion.tasks.base import sample_positions
from tl_inversion.training.checkpoint import latest_checkpoint
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.noise import perturb
from tl_inversion.training.trainer import _site_probs, train

SMALL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "n_cond_blocks": 1}


@pytest.fixture(scope="module", params=[c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok])
def counting_model(request, tmp_path_factory):
    """A random-init counting-shaped GPT-2 (vocab 40, n_ctx 33), saved and loaded by our loader."""
    return load_counting_shaped(tmp_path_factory.mktemp("probed"), request.param)


@pytest.fixture(scope="module")
def data():
    tr = counting.paper_split("train")[:2000]
    te = counting.paper_split("test")[:500]
    return tr, te


def _cfg(**kw):
    base = dict(
        sites=["blocks.0.hook_resid_post", "blocks.0.attn.hook_z[0]"],
        steps=6,
        batch_size=8,
        eval_every=3,
        eval_n=8,
        checkpoint_every=2,
        decoder=SMALL,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


class _Kill(Exception):
    pass


SAME_WIDTH = ["blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.mark.parametrize("topology, sites", [("per_hook", None), ("shared", None), ("per_hook", SAME_WIDTH)],
                         ids=["per_hook", "shared", "per_hook-stacked"])
def test_resume_after_kill_matches_uninterrupted(counting_model, data, tmp_path, topology, sites):
    tr, te = data
    task = counting.make_task()
    over = {"topology": topology, **({"sites": sites} if sites else {})}
    full = train(counting_model, task, tr, te, _cfg(**over), out_dir=tmp_path / "a", progress=False)

    def kill(step, record):
        if step == 5:  # after the checkpoint of step 4, before the one of step 6
            raise _Kill

    with pytest.raises(_Kill):
        train(counting_model, task, tr, te, _cfg(**over), out_dir=tmp_path / "b", progress=False, callback=kill)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000004"
    resumed = train(counting_model, task, tr, te, _cfg(**over), out_dir=tmp_path / "b", progress=False)
    a, b = full.bank.state_dict(), resumed.bank.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert list(full.history["step"]) == list(resumed.history["step"])
    assert full.history["loss"].tolist() == pytest.approx(resumed.history["loss"].tolist(), abs=0)


def test_refuses_to_overwrite_checkpoints(counting_model, data, tmp_path):
    tr, te = data
    task = counting.make_task()
    train(counting_model, task, tr, te, _cfg(steps=2), out_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(counting_model, task, tr, te, _cfg(steps=2), out_dir=tmp_path, resume=False, progress=False)


def test_resume_refuses_a_changed_config(counting_model, data, tmp_path):
    tr, te = data
    task = counting.make_task()
    train(counting_model, task, tr, te, _cfg(steps=2), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"batch_size \(checkpoint 8, now 16\)") as err:
        train(counting_model, task, tr, te, _cfg(steps=4, batch_size=16), out_dir=tmp_path, progress=False)
    assert isinstance(err.value, ConfigError) and err.value.field == "batch_size" and "--" not in str(err.value)
    # more steps is a legitimate continuation
    result = train(counting_model, task, tr, te, _cfg(steps=4), out_dir=tmp_path, progress=False)
    assert result.bank.meta["steps"] == 4
    assert result.bank.meta["train_config"]["steps"] == 4  # the bank records the config of the call that ended it


def test_resume_refuses_another_model(counting_model, data, tmp_path, tmp_path_factory):
    tr, te = data
    task = counting.make_task()
    train(counting_model, task, tr, te, _cfg(steps=2), out_dir=tmp_path, progress=False)
    other = load_counting_shaped(tmp_path_factory.mktemp("other"), "hooked" if HAS_HOOKED else "bridge", seed=7)
    with pytest.raises(ValueError, match="computes other activations"):
        train(other, task, tr, te, _cfg(steps=4), out_dir=tmp_path, progress=False)


def test_training_lowers_the_loss(counting_model, data):
    tr, te = data
    cfg = _cfg(steps=40, batch_size=32, eval_every=0, lr=3e-3, warmup_steps=5, sites=["blocks.1.hook_resid_post"])
    result = train(counting_model, counting.make_task(), tr, te, cfg, progress=False)
    first, last = result.history["loss"].iloc[0], result.history["loss"].iloc[-1]
    # an untrained decoder is near uniform over 40 tokens: loss about ln 40
    assert first == pytest.approx(math.log(40), rel=0.15)
    assert last < first - 0.5


def test_sample_positions_only_trainable_and_bos():
    task = counting.make_task()
    tokens = counting.paper_split("test")[:4000]
    g = torch.Generator().manual_seed(0)
    pos = sample_positions(task, tokens, g, bos_prob=0.0)
    c, colon = task.resolve_position(tokens, "c"), task.resolve_position(tokens, ":")
    assert bool(((pos == c) | (pos == colon)).all())
    # both positions occur, about half each
    assert 0.45 < float((pos == c).float().mean()) < 0.55
    pos = sample_positions(task, tokens, g, bos_prob=0.5)
    assert 0.45 < float((pos == 0).float().mean()) < 0.55


def test_rebalancing_weights_follow_the_paper_formula():
    sites = [Site("a"), Site("b"), Site("c")]
    rates = {"a": 0.9, "b": 0.6, "c": 0.9}
    probs = _site_probs(sites, rates, _cfg())
    mean = 0.8
    w = [math.exp(6 * (mean - r)) for r in (0.9, 0.6, 0.9)]
    expected = [x / sum(w) for x in w]
    assert probs.tolist() == pytest.approx(expected, rel=1e-5)
    assert _site_probs(sites, rates, _cfg(rebalance=False)).tolist() == pytest.approx([1 / 3] * 3)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="topology must be"):
        _cfg(topology="one_per_layer")
    with pytest.raises(ValueError, match="bos_prob"):
        _cfg(bos_prob=1.5)


def test_lr_factor_by_hand():
    from tl_inversion.training.schedule import lr_factor

    assert lr_factor(0, 10, 110) == pytest.approx(0.1)  # warm-up: (0+1)/10
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(60, 10, 110) == pytest.approx(0.55)  # half-way: 0.1 + 0.9 * 0.5
    assert lr_factor(110, 10, 110) == pytest.approx(0.1)  # floor
    assert lr_factor(60, 10, 110, "constant") == 1.0


def test_logged_learning_rate_is_the_one_each_step_used(counting_model, data):
    # warm-up 4 steps then cosine to step 8, written out by hand: step k (1-based) used
    # lr * k/4 during warm-up, then 0.1 + 0.9 * 0.5 * (1 + cos(pi * (k-1-4) / 4))
    tr, te = data
    logged: list[float] = []
    cfg = _cfg(steps=8, warmup_steps=4, schedule="cosine", lr=1e-3, eval_every=0, checkpoint_every=0,
               sites=["blocks.0.hook_resid_post"])
    result = train(counting_model, counting.make_task(), tr, te, cfg, progress=False,
                   callback=lambda step, rec: logged.append(float(rec["lr"])))
    expected = [1e-3 * k / 4 for k in (1, 2, 3, 4)]
    expected += [1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * j / 4))) for j in (0, 1, 2, 3)]
    assert logged == pytest.approx(expected)
    assert result.history.set_index("step")["lr"].loc[1] == pytest.approx(1e-3 / 4)


def test_stacked_training_equals_one_decoder_at_a_time(counting_model, data):
    """The vectorised per-hook step (stack=True) is the sequential step's mathematics."""
    tr, te = data
    task = counting.make_task()
    runs = [train(counting_model, task, tr, te, _cfg(sites=SAME_WIDTH, stack=stack, eval_every=0, steps=5),
                  progress=False)
            for stack in (True, False)]
    a, b = (r.bank.state_dict() for r in runs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert runs[0].history["loss"].tolist() == pytest.approx(runs[1].history["loss"].tolist(), rel=1e-5)


def test_compiled_training_equals_eager(counting_model, data, monkeypatch):
    """compile=True routes every loss (a stack and a lone decoder) through torch.compile
    and changes nothing else. The aot_eager backend stands in for Inductor here (it
    traces and differentiates the same graphs; Inductor's CPU code generation is slow)."""
    compiled = []
    real = torch.compile

    def spy(fn, **kw):
        compiled.append(fn)
        return real(fn, backend="aot_eager", dynamic=kw.get("dynamic"))

    monkeypatch.setattr(torch, "compile", spy)
    tr, te = data
    task = counting.make_task()
    sites = SAME_WIDTH[:2] + ["blocks.0.attn.hook_z[0]"]  # two stack, one does not
    runs = [train(counting_model, task, tr, te, _cfg(sites=sites, compile=c, eval_every=0, steps=4), progress=False)
            for c in (True, False)]
    assert len(compiled) == 2  # the stack's vmapped loss and the lone decoder's loss
    a, b = (r.bank.state_dict() for r in runs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bad_training_data_is_named(counting_model, data):
    tr, te = data
    task = counting.make_task()
    with pytest.raises(ValueError, match="train_data hold token ids 45..45, outside the model's vocabulary 0..39"):
        train(counting_model, task, torch.full_like(tr, 45), te, _cfg(steps=1), progress=False)
    with pytest.raises(ValueError, match="at least one input"):
        train(counting_model, task, tr[:0], te, _cfg(steps=1), progress=False)


def test_time_limit_counts_over_resumed_calls(counting_model, data, tmp_path, monkeypatch):
    """time_limit_s is a budget of training seconds over all calls, like `steps` is of steps:
    a fake clock advances 10 s per step; the schedule follows the total time."""
    import tl_inversion.training.trainer as training
    from tl_inversion.training.schedule import lr_factor

    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])
    tick = lambda step, rec: clock.__setitem__(0, clock[0] + 10.0)  # noqa: E731
    tr, te = data
    task = counting.make_task()
    kw = dict(steps=100, warmup_steps=1, schedule="cosine", eval_every=0, checkpoint_every=0,
              sites=["blocks.0.hook_resid_post"])
    # call 1, budget 25 s: the check after step 4 sees 30 s > 25 s; the checkpoint records 30 s
    first = train(counting_model, task, tr, te, _cfg(time_limit_s=25, **kw), out_dir=tmp_path, progress=False,
                  callback=tick)
    assert first.steps_this_call == 4
    # call 2, budget raised to 55 s: the clock goes on from 30 s: steps 5-8 (checks at 30, 40, 50, 60 s)
    lrs = []
    second = train(counting_model, task, tr, te, _cfg(time_limit_s=55, **kw), out_dir=tmp_path, progress=False,
                   callback=lambda step, rec: (lrs.append(float(rec["lr"])), tick(step, rec)))
    assert second.steps_this_call == 4 and second.bank.meta["steps"] == 8
    # step 5 used the rate of progress max(4/100, 30/55): the schedule did not restart
    assert lrs[0] == pytest.approx(1e-3 * lr_factor(int(30 / 55 * 100), 1, 100, "cosine"))
    # call 3, same budget: already spent, nothing to train
    third = train(counting_model, task, tr, te, _cfg(time_limit_s=55, **kw), out_dir=tmp_path, progress=False,
                  callback=tick)
    assert third.steps_this_call == 0
    with pytest.raises(ValueError, match="time_limit_s must be >= 0"):
        _cfg(time_limit_s=-1)


def test_resume_refuses_another_task(counting_model, data, tmp_path):
    from tl_inversion.tasks import addition

    tr, te = data
    train(counting_model, counting.make_task(), tr, te, _cfg(steps=2), out_dir=tmp_path, progress=False)
    add = addition.make_task()
    add_tr, add_te = addition.paper_split("train")[:200], addition.paper_split("test")[:50]
    # the addition task also fits this model's vocabulary (15 <= 40) and context (14 <= 33): only the
    # checkpoint's task record can tell; the vocabulary mismatch with the model is a warning first
    with pytest.warns(UserWarning, match="task 'addition' has 15 tokens but the model's vocabulary has 40"):
        with pytest.raises(ValueError, match="trained on task 'counting'.*this run has task 'addition'"):
            train(counting_model, add, add_tr, add_te, _cfg(steps=4), out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("over, message", [
    ({"warmup_steps": -3}, "warmup_steps must be >= 0"),
    ({"eval_every": -1}, "eval_every must be >= 0"),
    ({"checkpoint_every": -2}, "checkpoint_every must be >= 0"),
    ({"lr": 0.0}, "lr must be a positive, finite learning rate"),
    ({"lr": float("inf")}, "lr must be a positive, finite learning rate"),
    ({"time_limit_s": float("nan")}, "time_limit_s must be >= 0 seconds"),
    ({"train_noise": -0.1}, "train_noise must be in \\[0, 1\\]"),
    ({"train_noise": float("nan")}, "train_noise must be in \\[0, 1\\]"),
    ({"train_noise": 1.5}, "train_noise must be in \\[0, 1\\]"),
])
def test_config_refuses_bad_numbers(over, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**over)


def test_config_keeps_each_site_once_in_canonical_spelling():
    cfg = _cfg(sites=["blocks.1.hook_resid_post", Site("blocks.0.attn.hook_z", 0), " blocks.1.hook_resid_post",
                      "blocks.0.attn.hook_z[0]"])
    assert cfg.sites == ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z[0]"]


def test_unknown_devices_are_named():
    from tl_inversion.devices import resolve_device

    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="is not supported|no usable MPS backend"):
        resolve_device("meta" if torch.backends.mps.is_available() else "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_perturb_noise_is_uniform_level_times_the_norm():
    """D(z + n, z) = u * level * chi_d / sqrt(d) with u ~ U(0, 1): check its moments by hand.

    For d = 64, E[chi_d] / sqrt(d) = 0.99610 (Gamma-function ratio; about 1 - 1/(4d)) and the spread of chi_d is
    tiny, so D / level is close to U(0, 1): mean 0.498, quantiles 0.25 / 0.5 / 0.75 near
    0.249 / 0.498 / 0.747, and never above 1.5 (chi_64 / 8 has sd 0.088; above 1.5 is 5.7 sd).
    """
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 64, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 10, 20000)[:, None]
    level = 0.2
    out = perturb(z, level, g)
    d = ((out - z).norm(dim=-1) / z.norm(dim=-1)) / level
    chi_mean = math.sqrt(2) * math.exp(math.lgamma(32.5) - math.lgamma(32)) / 8
    assert chi_mean == pytest.approx(0.99610, abs=1e-5)
    assert float(d.mean()) == pytest.approx(0.5 * chi_mean, abs=0.01)
    q = torch.quantile(d, torch.tensor([0.25, 0.5, 0.75]))
    assert q.tolist() == pytest.approx([0.25 * chi_mean, 0.5 * chi_mean, 0.75 * chi_mean], abs=0.015)
    assert float(d.max()) < 1.5
    # the noise direction is isotropic: mean over rows of the normalised noise is ~0
    n = (out - z) / (out - z).norm(dim=-1, keepdim=True)
    assert float(n.mean(0).abs().max()) < 0.03
    # level 0 is the identity and draws nothing from the generator
    state = g.get_state()
    assert perturb(z, 0.0, g) is z
    assert torch.equal(g.get_state(), state)


def test_perturb_ball_is_uniform_in_the_ball():
    """Uniform in a d-ball: P(D / level <= r) = r^d, so the median of D / level is 0.5^(1/d)
    and the 10% quantile 0.1^(1/d); D never exceeds level. With d = 4 (so the law is far from
    a shell): median 0.8409, 10% quantile 0.5623; the direction is isotropic."""
    z = torch.randn(40000, 4, generator=torch.Generator().manual_seed(1)) * 3.0
    out = perturb(z, 0.1, torch.Generator().manual_seed(0), "ball")
    r = ((out - z).norm(dim=-1) / z.norm(dim=-1)) / 0.1
    assert float(r.max()) <= 1.0 + 1e-5
    q = torch.quantile(r, torch.tensor([0.1, 0.5]))
    assert q.tolist() == pytest.approx([0.1 ** 0.25, 0.5 ** 0.25], abs=0.01)  # 0.5623, 0.8409
    n = (out - z) / (out - z).norm(dim=-1, keepdim=True)
    assert float(n.mean(0).abs().max()) < 0.02
    with pytest.raises(ValueError, match=r"noise shape must be one of \('gaussian', 'ball', 'preimage'\), got 'cube'"):
        perturb(z, 0.1, torch.Generator(), "cube")
    with pytest.raises(ValueError, match="train_noise_shape must be one of"):
        _cfg(train_noise_shape="cube")


def test_training_with_noise_resumes_and_old_checkpoints_still_resume(counting_model, data, tmp_path):
    tr, te = data
    task = counting.make_task()
    full = train(counting_model, task, tr, te, _cfg(train_noise=0.1), out_dir=tmp_path / "a", progress=False)

    def kill(step, record):
        if step == 5:
            raise _Kill

    with pytest.raises(_Kill):
        train(counting_model, task, tr, te, _cfg(train_noise=0.1), out_dir=tmp_path / "b", progress=False,
              callback=kill)
    resumed = train(counting_model, task, tr, te, _cfg(train_noise=0.1), out_dir=tmp_path / "b", progress=False)
    for k, v in full.bank.state_dict().items():
        torch.testing.assert_close(v, resumed.bank.state_dict()[k], rtol=0, atol=0, msg=k)
    # noise changes what is learnt (the same seed without noise gives other weights)
    clean = train(counting_model, task, tr, te, _cfg(), progress=False)
    assert any(not torch.equal(v, clean.bank.state_dict()[k]) for k, v in full.bank.state_dict().items())
    # the shape reaches the training step: ball noise gives other weights than gaussian noise
    ball = train(counting_model, task, tr, te, _cfg(train_noise=0.1, train_noise_shape="ball"), progress=False)
    assert any(not torch.equal(v, ball.bank.state_dict()[k]) for k, v in full.bank.state_dict().items())
    pre = train(counting_model, task, tr, te, _cfg(train_noise=0.1, train_noise_shape="preimage"), progress=False)
    assert any(not torch.equal(v, pre.bank.state_dict()[k]) for k, v in ball.bank.state_dict().items())
    with pytest.raises(ValueError, match=r"train_noise_shape 'preimage' needs train_noise < 1 .* got 1.0"):
        _cfg(train_noise=1.0, train_noise_shape="preimage")
    # a checkpoint written before train_noise existed resumes as a noise-free run
    train(counting_model, task, tr, te, _cfg(steps=2), out_dir=tmp_path / "c", progress=False)
    ckpt = latest_checkpoint(tmp_path / "c")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["config"]["train_noise"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    resumed = train(counting_model, task, tr, te, _cfg(steps=4), out_dir=tmp_path / "c", progress=False)
    assert resumed.bank.meta["steps"] == 4
    with pytest.raises(ValueError, match=r"in train_noise \(checkpoint 0.0, now 0.1\)"):
        train(counting_model, task, tr, te, _cfg(steps=6, train_noise=0.1), out_dir=tmp_path / "c", progress=False)


def test_config_numbers_are_plain_and_strings_are_refused():
    import numpy as np

    cfg = _cfg(train_noise=np.float32(0.25), lr=torch.tensor(2e-3), steps=np.int64(6), batch_size=8.0)
    assert type(cfg.train_noise) is float and cfg.train_noise == pytest.approx(0.25)
    assert type(cfg.lr) is float and type(cfg.steps) is int and cfg.steps == 6 and type(cfg.batch_size) is int
    assert json.loads(json.dumps(cfg.to_dict()))["train_noise"] == cfg.train_noise  # resumable: JSON round trip
    with pytest.raises(TypeError, match=r"train_noise must be a number \(float\), got '0.1' of type str"):
        _cfg(train_noise="0.1")
    with pytest.raises(TypeError, match="lr must be a number"):
        _cfg(lr=True)
    with pytest.raises(TypeError, match="steps must be a whole number, got 2.5"):
        _cfg(steps=2.5)
    # the probed model's config too (its recipe is written as JSON)
    from tl_inversion.training.probed import ProbedConfig

    pc = ProbedConfig(lr=np.float64(3e-3), steps=torch.tensor(40), d_mlp=np.int32(128))
    assert (type(pc.lr), type(pc.steps), type(pc.d_mlp)) == (float, int, int) and pc.steps == 40
    assert json.loads(json.dumps(dataclasses.asdict(pc)))["lr"] == 3e-3
    with pytest.raises(TypeError, match="batch_size must be a number"):
        ProbedConfig(batch_size="512")


def test_compile_backend_failures_become_one_line_errors():
    from tl_inversion.training.trainer import _explain_compile_errors

    class InductorError(Exception):
        pass

    InductorError.__module__ = "torch._inductor.exc"
    with pytest.raises(ValueError, match=r"torch.compile failed on cpu .*InductorError: boom.*compile=False") as err:
        with _explain_compile_errors(True, torch.device("cpu")):
            raise InductorError("boom\nlong traceback")
    assert isinstance(err.value, ConfigError) and err.value.field == "compile"
    with pytest.raises(InductorError):  # without compile nothing is reworded
        with _explain_compile_errors(False, torch.device("cpu")):
            raise InductorError("boom")
    with pytest.raises(KeyError):  # other errors pass through
        with _explain_compile_errors(True, torch.device("cpu")):
            raise KeyError("x")


def test_noise_flag_blurs_half_the_rows_and_says_which():
    from tl_inversion.decoding.bank import DecoderBank
    from tl_inversion.training.trainer import condition

    wide, narrow = Site("blocks.0.hook_resid_post"), Site("blocks.0.attn.hook_z", head=0)
    bank = DecoderBank.create([wide, narrow], {str(wide): 10, str(narrow): 4}, topology="shared", vocab_size=8,
                              n_ctx=6, bos_id=5, eos_id=6, pad_id=7, noise_flag=True, **SMALL)
    assert bank.decoders[0].cfg.d_act == 11 and bank.noise_flag
    n = 4000
    z = torch.randn(n, 4) * 3
    cfg = _cfg(train_noise=0.1, train_noise_shape="ball", train_noise_flag=True)
    out = condition(bank, narrow, z, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (n, 11)
    assert (out[:, 4:10] == 0).all()  # zero padding between the site's width and the flag column
    flagged = out[:, 10] > 0
    share = float(flagged.float().mean())
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n)  # a fair coin per row
    # exact rows are z itself; blurred rows lie inside the ball of radius 0.1 |z| and carry their RMS
    assert torch.equal(out[~flagged, :4], z[~flagged])
    d = (out[flagged, :4] - z[flagged]).norm(dim=-1) / z[flagged].norm(dim=-1)
    assert bool((d > 0).all()) and float(d.max()) <= 0.1 + 1e-6
    torch.testing.assert_close(out[flagged, 10], out[flagged, :4].norm(dim=-1) / 2.0)  # sqrt(4) = 2
    # without the flag every row is blurred and no column is added (the run of train_noise alone)
    plain = DecoderBank.create([narrow], {str(narrow): 4}, vocab_size=8, n_ctx=6, bos_id=5, eos_id=6, pad_id=7, **SMALL)
    all_blurred = condition(plain, narrow, z, _cfg(train_noise=0.1, train_noise_shape="ball"), torch.Generator())
    assert all_blurred.shape == (n, 4) and bool(((all_blurred - z).norm(dim=-1) > 0).all())
    with pytest.raises(ValueError, match="needs a bank trained with train_noise_flag"):
        plain.pad(z, narrow, blurred=True)
    assert torch.equal(plain.pad(z, narrow, blurred=torch.zeros(n)), z)  # all rows exact: fine without a flag
    for bad, error, message in ((0.5, TypeError, "blurred must be True or False"),
                                (None, TypeError, "blurred must be True or False"),
                                ("yes", TypeError, "blurred must be True or False"),
                                (torch.ones(3), ValueError, r"one 0/1 flag per row, shape \[4000\]; got shape \[3\]"),
                                (torch.full((n,), 2.0), ValueError, "one 0/1 flag per row")):
        with pytest.raises(error, match=message):
            bank.pad(z, narrow, blurred=bad)
    with pytest.raises(ValueError, match=r"train_noise_flag needs a train_noise > 0") as err:
        _cfg(train_noise_flag=True)
    assert isinstance(err.value, ConfigError) and err.value.field == "train_noise_flag" and "--" not in str(err.value)
    with pytest.raises(TypeError, match="train_noise_flag must be True or False"):
        _cfg(train_noise=0.1, train_noise_flag=1)
    with pytest.raises(TypeError, match="rebalance must be True or False, got 'no'"):
        _cfg(rebalance="no")  # bool("no") is True: a string would silently mean the opposite
    import numpy as np

    assert _cfg(train_noise=0.1, train_noise_flag=np.True_).train_noise_flag is True


@pytest.mark.parametrize("topology", ["per_hook", "shared"])
def test_noise_flagged_training_resumes_and_saves_its_flag(counting_model, data, tmp_path, topology):
    from tl_inversion.decoding.bank import DecoderBank

    tr, te = data
    task = counting.make_task()
    cfg = dict(train_noise=0.1, train_noise_shape="ball", train_noise_flag=True, topology=topology)
    full = train(counting_model, task, tr, te, _cfg(**cfg), out_dir=tmp_path / "a", progress=False)

    def kill(step, record):
        if step == 5:
            raise _Kill

    with pytest.raises(_Kill):
        train(counting_model, task, tr, te, _cfg(**cfg), out_dir=tmp_path / "b", progress=False, callback=kill)
    resumed = train(counting_model, task, tr, te, _cfg(**cfg), out_dir=tmp_path / "b", progress=False)
    for k, v in full.bank.state_dict().items():
        torch.testing.assert_close(v, resumed.bank.state_dict()[k], rtol=0, atol=0, msg=k)
    loaded = DecoderBank.load(tmp_path / "a" / "bank", counting_model)
    widest = [max(loaded.widths[str(s)] for s in g) for g in loaded.groups]
    assert loaded.noise_flag and [d.cfg.d_act for d in loaded.decoders] == [w + 1 for w in widest]  # + the flag
    unflagged = train(counting_model, task, tr, te, _cfg(train_noise=0.1, train_noise_shape="ball", topology=topology),
                      progress=False)
    assert not unflagged.bank.noise_flag and [d.cfg.d_act for d in unflagged.bank.decoders] == widest
    with pytest.raises(ValueError, match=r"train_noise_flag \(checkpoint True, now False\)"):
        train(counting_model, task, tr, te, _cfg(train_noise=0.1, train_noise_shape="ball", topology=topology, steps=8),
              out_dir=tmp_path / "a", progress=False)


def test_warm_start_begins_from_the_given_bank(counting_model, data, tmp_path):
    """A run warm-started from a trained bank begins with that bank's weights (one step at a
    learning rate of 1e-12 leaves them where they were, unlike a random initialisation); a
    bank of another shape, another noise flag or without the site is refused by name."""
    tr, te = data
    task = counting.make_task()
    first = train(counting_model, task, tr, te, _cfg(steps=8, lr=3e-3, eval_every=0), out_dir=tmp_path / "a",
                  progress=False)
    src = first.bank
    tiny_lr = dict(steps=1, lr=1e-12, warmup_steps=0, eval_every=0, checkpoint_every=0)
    warm = train(counting_model, task, tr, te, _cfg(init_banks=[str(tmp_path / "a" / "bank")], **tiny_lr),
                 progress=False).bank
    cold = train(counting_model, task, tr, te, _cfg(**tiny_lr), progress=False).bank
    for site in src.sites:
        s_state = src.lookup(site)[0].state_dict()
        w_state, c_state = warm.lookup(site)[0].state_dict(), cold.lookup(site)[0].state_dict()
        for k, v in s_state.items():
            torch.testing.assert_close(w_state[k].float(), v.float(), atol=1e-6, rtol=0)
        assert max(float((c_state[k].float() - v.float()).abs().max()) for k, v in s_state.items()) > 1e-3
    assert warm.training_config(src.sites[0])["init_banks"] == [str(tmp_path / "a" / "bank")]
    with pytest.raises(ValueError, match=r"config differs from the source's in d_model \(source 16, here 32\)"):
        train(counting_model, task, tr, te, _cfg(init_banks=[str(tmp_path / "a" / "bank")],
                                                  decoder={**SMALL, "d_model": 32}, **tiny_lr), progress=False)
    with pytest.raises(ValueError, match=r"warm start .*trained without the noise flag and this one is with it"):
        train(counting_model, task, tr, te, _cfg(init_banks=[str(tmp_path / "a" / "bank")], train_noise=0.1,
                                                  train_noise_flag=True, **tiny_lr), progress=False)
    from tl_inversion.model.sites import SiteError

    with pytest.raises(SiteError, match="this bank covers"):
        train(counting_model, task, tr, te, _cfg(init_banks=[str(tmp_path / "a" / "bank")],
                                                  sites=["blocks.1.hook_resid_post"], **tiny_lr), progress=False)
    with pytest.raises(TypeError, match="init_banks must be a list of bank folders"):
        _cfg(init_banks=[3])


def test_warm_start_resumes_records_and_refuses_its_own_output(counting_model, data, tmp_path):
    """A warm-started run killed midway resumes from its checkpoint even when the source bank
    is gone, and records the bank it started from; the run's own output bank and a bank of
    another task are refused; a refused copy leaves the target bank unchanged."""
    import shutil

    from tl_inversion.decoding.bank import DecoderBank

    tr, te = data
    task = counting.make_task()
    train(counting_model, task, tr, te, _cfg(steps=4, eval_every=0), out_dir=tmp_path / "src", progress=False)
    shutil.copytree(tmp_path / "src" / "bank", tmp_path / "copy")
    cfg = _cfg(steps=6, eval_every=0, checkpoint_every=2, init_banks=[str(tmp_path / "copy")])

    def kill(step, record):
        if step == 5:  # after the checkpoint of step 4
            raise _Kill

    with pytest.raises(_Kill):
        train(counting_model, task, tr, te, cfg, out_dir=tmp_path / "run", progress=False, callback=kill)
    shutil.rmtree(tmp_path / "copy")  # the source is gone: resuming needs only the checkpoint
    resumed = train(counting_model, task, tr, te, dataclasses.replace(cfg, init_banks=[]), out_dir=tmp_path / "run",
                    progress=False)
    assert resumed.bank.meta["steps"] == 6
    assert resumed.bank.training_config(resumed.bank.sites[0])["init_banks"] == [str(tmp_path / "copy")]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init_banks"] == [str(tmp_path / "copy")]
    last = latest_checkpoint(tmp_path / "run") / "trainer_state.json"  # and so do the checkpoints written since
    assert json.loads(last.read_text())["config"]["init_banks"] == [str(tmp_path / "copy")]
    # the output folder's own bank as the source (only the bank travelled, no checkpoints): refused
    shutil.copytree(tmp_path / "src" / "bank", tmp_path / "solo" / "bank")
    with pytest.raises(ValueError, match="is this run's own output bank"):
        train(counting_model, task, tr, te, _cfg(init_banks=[str(tmp_path / "solo" / "bank")]),
              out_dir=tmp_path / "solo", progress=False)
    # another task's bank
    other = DecoderBank.load(tmp_path / "src" / "bank")
    other.meta["task"] = {**other.meta["task"], "name": "elsewhere", "vocab_sha256": "0" * 64}
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="warm start .*trained on task 'elsewhere'"):
        train(counting_model, task, tr, te, _cfg(init_banks=[str(tmp_path / "other")]), progress=False)
    # a refusal copies nothing: the first decoder would match, the second site is missing
    target = DecoderBank.load(tmp_path / "src" / "bank")
    before = {k: v.clone() for k, v in target.decoders[0].state_dict().items()}
    partial = resumed.bank.select([resumed.bank.sites[0]])
    for p in partial.decoders[0].parameters():
        p.data.add_(1.0)
    with pytest.raises(Exception, match="no decoder for site"):
        target.load_weights_from(partial)
    for k, v in target.decoders[0].state_dict().items():
        assert torch.equal(v, before[k])

