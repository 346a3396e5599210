"""train(): the faithfulness it logs (against a hand computation), Ctrl-C / SIGTERM
checkpoints, the log's clock and input counter, and the input types it accepts."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED
from model_files import load_counting_shaped, write_gpt2

from tl_inversion.decoding.decoder import Decoder
from tl_inversion.errors import InputTypeError
from tl_inversion.tasks import counting
from tl_inversion.training.checkpoint import latest_checkpoint
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.trainer import train

KIND = "hooked" if HAS_HOOKED else "bridge"
SMALL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "n_cond_blocks": 1}
PAPER_EPSILON = 0.1  # InversionView Sec. 3 / App. C


def _cfg(**kw):
    base = dict(sites=["blocks.0.hook_resid_post", "blocks.0.attn.hook_z[0]"], steps=6, batch_size=8, eval_every=3,
                eval_n=8, checkpoint_every=4, decoder=SMALL, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if not (HAS_HOOKED or HAS_BRIDGE):
        pytest.skip("no TransformerLens model class")
    return load_counting_shaped(tmp_path_factory.mktemp("probed"), KIND)


@pytest.fixture(scope="module")
def data():
    return counting.paper_split("train")[:500], counting.paper_split("test")[:100]


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# faithfulness as train() logs it -------------------------------------------------------------
SCALES = {"1": 1.05, "2": 1.15, "3": 1.5}  # token -> its embedding as a multiple of every other token's


@pytest.fixture(scope="module")
def scaled_embedding_model(tmp_path_factory):
    """A counting-shaped GPT-2 whose every token embeds as the same vector v, except the digits
    1, 2, 3, which embed as 1.05 v, 1.15 v and 1.5 v; position embeddings are zero. At
    ``blocks.0.hook_resid_pre`` a row of one digit d is then at distance |scale(d) - 1| from
    the activation of any letter or ``:`` (weight centering scales with v, so it keeps this)."""
    if not (HAS_HOOKED or HAS_BRIDGE):
        pytest.skip("no TransformerLens model class")
    from transformers import GPT2LMHeadModel

    folder = write_gpt2(tmp_path_factory.mktemp("scaled"))
    hf = GPT2LMHeadModel.from_pretrained(folder)
    v = torch.randn(hf.config.n_embd, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf.transformer.wte.weight[:] = v
        for ch, k in SCALES.items():
            hf.transformer.wte.weight[counting.CHARS.index(ch)] = k * v
        hf.transformer.wpe.weight.zero_()
    hf.save_pretrained(folder, safe_serialization=True)
    return load_counting_shaped(folder, KIND)


def _hand_distances(model, task, samples: torch.Tensor, query_input: str) -> list[float]:
    """min over non-special positions of ||z - z_q|| / ||z_q||, read with run_with_cache."""
    name = "blocks.0.hook_resid_pre"
    with torch.inference_mode():
        _, cache = model.run_with_cache(task.encode([query_input]))
        z_q = cache[name][0, len(query_input) - 1].double()  # the ':' of the query input
        _, cache = model.run_with_cache(samples)
    out = []
    for row, acts in zip(samples.tolist(), cache[name].double()):
        d = [float((acts[t] - z_q).norm() / z_q.norm()) for t, tok in enumerate(row) if tok not in task.special_ids]
        out.append(min(d))
    return out


def test_logged_faithfulness_uses_the_paper_epsilon(scaled_embedding_model, data, tmp_path, monkeypatch):
    """train() logs the fraction of decoded samples whose distance is below epsilon = 0.1.

    The decoder is replaced by one that returns rows of 1s, 2s and 3s in turn, at distances
    0.05, 0.15 and 0.5 from every query (computed here by hand from run_with_cache): a
    third of them are faithful at epsilon 0.1, two thirds at 0.2. A run with another
    default epsilon, or one that ignored cfg.epsilon, would log another rate."""
    model, task = scaled_embedding_model, counting.make_task()
    samples = task.encode(["111", "222", "333"])
    hand = _hand_distances(model, task, samples, "aab|a:2")
    assert hand == pytest.approx([0.05, 0.15, 0.5], abs=1e-4)

    def fake_generate(self, z, site, temperature=1.0, max_len=None, generator=None):
        return samples.repeat(math.ceil(z.shape[0] / 3), 1)[: z.shape[0]].to(z.device)

    monkeypatch.setattr(Decoder, "generate", fake_generate)
    tr, te = data
    site = "blocks.0.hook_resid_pre"
    kw = dict(sites=[site], steps=2, eval_every=0, eval_n=9, checkpoint_every=0)
    run = train(model, task, tr, te, _cfg(**kw), out_dir=tmp_path / "a", progress=False)
    want = sum(d < PAPER_EPSILON for d in hand) / 3  # 1/3: each sample row occurs 3 times in 9
    assert want == pytest.approx(1 / 3)
    assert run.history[f"faithfulness/{site}"].iloc[-1] == pytest.approx(want)
    assert run.faithfulness.loc[site, "faithfulness"] == pytest.approx(want)
    last = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1])
    assert last[f"faithfulness/{site}"] == pytest.approx(want)
    wider = train(model, task, tr, te, _cfg(epsilon=0.2, **kw), progress=False)
    assert wider.history[f"faithfulness/{site}"].iloc[-1] == pytest.approx(sum(d < 0.2 for d in hand) / 3)


# signals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_writes_a_checkpoint_and_the_run_resumes_from_it(model, data, tmp_path, signum):
    tr, te = data
    task = counting.make_task()
    full = train(model, task, tr, te, _cfg(), out_dir=tmp_path / "full", progress=False)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def interrupt(step, record):
        if step == 3:  # no regular checkpoint here (checkpoint_every=4)
            os.kill(os.getpid(), signum)

    with pytest.raises(KeyboardInterrupt):
        train(model, task, tr, te, _cfg(), out_dir=tmp_path / "b", progress=False, callback=interrupt)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert latest_checkpoint(tmp_path / "b").name == "step_00000003"
    resumed = train(model, task, tr, te, _cfg(), out_dir=tmp_path / "b", progress=False)
    assert resumed.steps_this_call == 3 and resumed.bank.meta["steps"] == 6
    _same_weights(full.bank, resumed.bank)
    assert list(resumed.history["step"]) == list(full.history["step"])


def test_without_out_dir_a_signal_is_python_s_default(model, data):
    """No out_dir, no handler: SIGINT is Python's own KeyboardInterrupt, raised at once."""
    tr, te = data
    seen = []

    def interrupt(step, record):
        seen.append(step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    # Python's handler, as in a terminal or a notebook (a shell's background job starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(model, counting.make_task(), tr, te, _cfg(), progress=False, callback=interrupt)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [1, 2]


# the log -----------------------------------------------------------------------------------
def test_log_records_elapsed_seconds_and_inputs_seen(model, data, tmp_path):
    tr, te = data
    task = counting.make_task()
    cfg = _cfg(steps=6, eval_every=2, batch_size=8)
    stop_at_4 = lambda step, record: step == 4 and os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        train(model, task, tr, te, cfg, out_dir=tmp_path, progress=False, callback=stop_at_4)
    train(model, task, tr, te, cfg, out_dir=tmp_path, progress=False)  # resumed: the clock goes on
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "faithfulness" in r]
    assert [r["step"] for r in evaluations] == [2, 4, 6]
    assert [r["inputs_seen"] for r in evaluations] == [16, 32, 48]  # steps x batch_size
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed[0] > 0 and all(b >= a for a, b in zip(elapsed, elapsed[1:]))
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # no duplicate after the resume


# input types -------------------------------------------------------------------------------
def test_texts_are_encoded_and_a_model_name_is_refused(model, data):
    tr, te = data
    task = counting.make_task()
    texts_tr, texts_te = task.decode(tr[:200]), task.decode(te[:40])
    assert isinstance(texts_tr[0], str) and torch.equal(task.encode(texts_tr), tr[:200])
    cfg = _cfg(steps=2, eval_every=0, sites=["blocks.0.hook_resid_post"])
    from_texts = train(model, task, texts_tr, texts_te, cfg, progress=False)
    from_ids = train(model, task, tr[:200], te[:40], cfg, progress=False)
    _same_weights(from_texts.bank, from_ids.bank)
    with pytest.raises(InputTypeError, match="model must be a TransformerLens HookedTransformer or TransformerBridge, "
                                             "got str .*'gpt2' looks like a model name"):
        train("gpt2", task, tr, te, cfg, progress=False)
    with pytest.raises(InputTypeError, match="train_data must be an integer tensor .* or a list of texts"):
        train(model, task, tr.numpy(), te, cfg, progress=False)
    with pytest.raises(InputTypeError, match="cfg must be a TrainConfig, got dict"):
        train(model, task, tr, te, cfg.to_dict(), progress=False)


def test_handlers_only_in_the_main_thread_and_a_second_signal_stops_at_once():
    import threading

    from tl_inversion.training.interrupt import signals_caught

    before = signal.getsignal(signal.SIGINT)
    errors, seen = [], []

    def in_thread():
        try:
            with signals_caught(True) as interrupt:  # signal.signal here would raise ValueError
                seen.append((signal.getsignal(signal.SIGINT), interrupt.signum))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert errors == [] and seen == [(before, None)]
    with signals_caught(True) as interrupt:
        assert signal.getsignal(signal.SIGINT) is interrupt
        interrupt(signal.SIGINT, None)  # the first is remembered
        assert interrupt.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            interrupt(signal.SIGINT, None)  # the second stops at once
    assert signal.getsignal(signal.SIGINT) is before
