"""The live viewer's JSON API over the embedded demo, without a browser.

Expected values come from direct calls of ``sample_preimage`` (same seed and settings) and
from the counting grammar read off the texts, not from the viewer's code.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from tl_inversion.errors import InputValueError
from tl_inversion.inversion.sampling import sample_preimage
from tl_inversion.viewer.app_cli import main

SITE = "blocks.1.attn.hook_result[0]"
QUERY = "ddkdkkxdk|k:4"
PAPER = [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1)]


def _distinct_rows(df, eps):
    """Distinct candidates in order of distance, with their pool counts (derived here)."""
    keys = df["tokens"].map(tuple)
    counts = keys.value_counts()
    first = df[~keys.duplicated(keep="first")]
    return [(r.text, r.distance, r.matched_pos, r.distance <= eps, r.valid, int(counts[tuple(r.tokens)]))
            for r in first.itertuples()]


def _check_rows(got, expected):
    assert len(got) == len(expected) > 0
    for row, (text, dist, mpos, inside, valid, count) in zip(got, expected):
        assert row["text"] == text
        assert (row["distance"] is None and math.isinf(dist)) or row["distance"] == pytest.approx(dist, rel=1e-6)
        assert (row["matched_pos"], row["in_preimage"], row["valid"], row["count"]) == (mpos, inside, valid, count)


def test_info_lists_the_bank_sites_and_task_positions(viewer, demo, http):
    model, bank, task = demo
    status, info = http(viewer.url + "api/info")
    assert status == 200
    assert [s["name"] for s in info["sites"]] == [str(s) for s in bank.sites]
    assert {":", "c", "n", "|"} <= set(info["positions"])
    assert info["n_layers"] == model.cfg.n_layers and info["n_heads"] == model.cfg.n_heads
    assert viewer.url.startswith("http://127.0.0.1:")
    status, page = http(viewer.url + "api/nothing")
    assert status == 404


def test_sample_rows_match_a_direct_call(viewer, demo, http):
    model, bank, task = demo
    status, out = http(viewer.url + "api/sample", {"text": QUERY, "site": SITE, "position": ":", "n_samples": 48,
                                                   "seed": 3, "schedule": "auto"})
    assert status == 200, out
    direct = sample_preimage(bank, model, task, QUERY, SITE, ":", schedule=PAPER, n_repeats=1, batch_size=12, seed=3)
    _check_rows(out["rows"], _distinct_rows(direct.df, 0.1))
    assert out["pool"]["n"] == 48
    assert out["pool"]["in_preimage_fraction"] == pytest.approx(float((direct.df["distance"] <= 0.1).mean()))
    assert sum(out["pool"]["histogram"]["counts"]) + out["pool"]["n_inf"] == 48
    # the queried token and the head's attention from ':' (index 12 of B ddkdkkxdk | k : 4 E)
    assert out["query"]["position"] == 12 and out["query"]["tokens"][12] == ":"
    _, cache = model.run_with_cache(task.encode(QUERY), names_filter="blocks.1.attn.hook_pattern")
    att = cache["blocks.1.attn.hook_pattern"][0, 0, 12]
    assert out["query"]["attention"] == pytest.approx(att[: len(out["query"]["attention"])].tolist(), abs=1e-4)
    assert len(out["query"]["attention"]) == len(QUERY) + 2  # BOS .. EOS
    # count consistency over the pool's in-preimage, well-formed samples, read off the texts
    sub = direct.df[(direct.df["distance"] <= 0.1) & direct.df["valid"]]
    agree = sum(int(t.split("|")[0].count(t.split("|")[1][0]) == 4) for t in sub["text"])
    (count,) = [c for c in out["consistency"] if c["feature"] == "query_count"]
    assert (count["query_value"], count["n"], count["n_agree"]) == (4, len(sub), agree)


def test_fixed_temperatures_cosine_and_epsilon(viewer, demo, http):
    model, bank, task = demo
    body = {"text": "abcabc|a:2", "site": "blocks.0.attn.hook_result[0]", "position": "c", "n_samples": 10,
            "schedule": "0.5, 1", "metric": "cosine", "epsilon": "0.3", "seed": 1}
    status, out = http(viewer.url + "api/sample", body)
    assert status == 200, out
    direct = sample_preimage(bank, model, task, "abcabc|a:2", "blocks.0.attn.hook_result[0]", "c",
                             schedule=[(0.5, 0.0), (1.0, 0.0)], n_repeats=1, batch_size=5, seed=1,
                             metric="cosine", epsilon=0.3)
    _check_rows(out["rows"], _distinct_rows(direct.df, 0.3))
    assert out["settings"]["epsilon"] == 0.3 and out["settings"]["metric"] == "cosine"
    assert out["query"]["tokens"][out["query"]["position"]] == "a"  # 'c' names the query letter


def test_residual_site_has_no_attention(viewer, http):
    status, out = http(viewer.url + "api/sample", {"text": QUERY, "site": "blocks.1.hook_resid_post",
                                                   "position": 13, "n_samples": 4})
    assert status == 200, out
    assert out["query"]["attention"] is None and out["query"]["position"] == 13


BAD = [
    ({"text": "ab#c|a:1"}, "not input characters"),
    ({"position": "99"}, "out of range"),
    ({"position": "zz"}, "no position named"),
    ({"site": "blocks.0.hook_resid_post"}, "this bank covers"),
    ({"site": "not a site!"}, "site"),
    ({"text": "   "}, "input is empty"),
    ({"n_samples": 10**9}, "4096"),
    ({"n_samples": 0}, "1..4096"),
    ({"n_samples": "many"}, "n_samples"),
    ({"metric": "l1"}, "metric"),
    ({"epsilon": -1}, "positive"),
    ({"schedule": "hot"}, "not a number"),
    ({"text": "a" * 40}, "at most"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_a_400_and_the_server_keeps_serving(viewer, http, change, message):
    body = {"text": QUERY, "site": SITE, "position": ":", "n_samples": 4} | change
    status, out = http(viewer.url + "api/sample", body)
    assert status == 400 and message in out["error"], out
    status, out = http(viewer.url + "api/sample", {"text": QUERY, "site": SITE, "position": ":", "n_samples": 4})
    assert status == 200 and len(out["rows"]) >= 1


def test_malformed_bodies_and_internal_errors(viewer, http, monkeypatch):
    status, out = http(viewer.url + "api/sample", raw=b"{not json")
    assert status == 400 and "not JSON" in out["error"]
    status, out = http(viewer.url + "api/sample", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in out["error"]
    session = viewer.server.session

    def broken(payload):
        raise RuntimeError("boom")

    monkeypatch.setattr(session, "sample", broken)
    status, out = http(viewer.url + "api/sample", {"text": QUERY})
    assert status == 500 and "boom" in out["error"]
    monkeypatch.undo()
    status, out = http(viewer.url + "api/attention", {"text": "abab|a:2"})
    assert status == 200 and out["tokens"] == list("Babab|a:2E")


def test_attention_endpoint_matches_the_model(viewer, demo, http):
    model, _, task = demo
    status, out = http(viewer.url + "api/attention", {"text": "xyxxzy|x:3"})
    assert status == 200
    _, cache = model.run_with_cache(task.encode("xyxxzy|x:3"), names_filter=lambda n: n.endswith("hook_pattern"))
    n = len("xyxxzy|x:3") + 2
    for layer in range(model.cfg.n_layers):
        want = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, :n, :n]
        assert torch.tensor(out["patterns"][layer]) == pytest.approx(want, abs=1e-3)
    assert http(viewer.url + "api/attention", {"text": ""})[0] == 400


def test_requests_run_one_at_a_time(viewer, http):
    lock = viewer.server.lock
    results = []
    with lock:  # a request arriving while the lock is held waits, then succeeds
        t = threading.Thread(target=lambda: results.append(
            http(viewer.url + "api/sample", {"text": QUERY, "site": SITE, "position": ":", "n_samples": 4})))
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive() and not results
    t.join(timeout=120)
    assert results and results[0][0] == 200


def test_cli_usage_errors(capsys):
    assert main(["--model", "somewhere"]) == 2
    assert "--bank" in capsys.readouterr().err
    with pytest.raises(InputValueError, match="port"):
        from tl_inversion.viewer.server import make_server

        make_server(None, None, "counting", port=70000)
