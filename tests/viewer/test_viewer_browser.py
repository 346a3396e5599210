"""End to end in headless Chromium: the live viewer over the embedded demo.

Skipped when the ``playwright`` package or ``/usr/bin/chromium`` is missing (no browser is
ever downloaded). Expected rows come from a direct ``sample_preimage`` call. The time from
pressing Sample to samples on screen is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import pytest

from tl_inversion.inversion.sampling import sample_preimage

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PAPER = [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1)]
QUERY = "xyxxzy|x:3"


@pytest.fixture()
def page(tmp_path):
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=ARGS, accept_downloads=True,
                                                    viewport={"width": 1500, "height": 1000})
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(120_000)
            yield pg
        finally:
            ctx.close()


def _sample(page) -> float:
    """Press Sample, wait for the result; seconds from the click to samples (or an error) on screen."""
    page.evaluate("""() => { window.__states = [];
        new MutationObserver(() => window.__states.push(document.getElementById('status').textContent))
          .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true}); }""")
    t0 = time.perf_counter()
    page.click("#sample")
    page.wait_for_function("['done', 'error'].includes(document.getElementById('status').dataset.state)")
    seconds = time.perf_counter() - t0
    assert page.evaluate("window.__states")[0].startswith("sampling...")
    return seconds


def test_viewer_end_to_end(viewer, demo, page, tmp_path):
    model, bank, task = demo
    page.goto(viewer.url)
    page.wait_for_function("document.querySelectorAll('#site option').length === 3")
    assert page.input_value("#query") == "ddkdkkxdk|k:4"  # the default query

    # a query at layer 1's head, 64 samples
    page.fill("#query", QUERY)
    page.select_option("#site", "blocks.1.attn.hook_result[0]")
    page.fill("#position", ":")
    page.fill("#n-samples", "64")
    seconds = _sample(page)
    print(f"\nSample -> samples on screen (64 samples, demo, this CPU): {seconds:.2f} s "
          f"(page's own measure {page.evaluate('window.tliLastSampleMs') / 1000:.2f} s)")
    assert page.get_attribute("#status", "data-state") == "done"
    direct = sample_preimage(bank, model, task, QUERY, "blocks.1.attn.hook_result[0]", ":", schedule=PAPER,
                             n_repeats=1, batch_size=16, seed=0)
    distinct = direct.df[~direct.df["tokens"].map(tuple).duplicated()]
    rows = page.locator("#current .sample-row")
    assert rows.count() == len(distinct)
    assert rows.first.get_attribute("data-text") == distinct["text"].iloc[0]
    # queried token marked, attention shading on the query, readouts
    assert page.text_content("#current .query .tok.qpos") == ":"
    assert "rgba(22, 163, 74" in page.get_attribute("#current .query .tok[data-pos='7']", "style")
    frac = float((direct.df["distance"] <= 0.1).mean())
    assert f"in preimage: {100 * frac:.1f}% of 64 samples" in page.text_content("#current .in-fraction")
    assert "query_count = 3 in the query" in page.text_content("#current .readout")
    n_in = int((distinct["distance"] <= 0.1).sum())
    assert page.locator("#current .eps-rule").count() == (1 if 0 < n_in < len(distinct) else 0)
    assert page.locator("#current .sample-row.invalid").count() == int((~distinct["valid"]).sum())
    assert page.locator("#current .sample-row .tok.match").count() == len(distinct)
    assert page.locator("#current svg.hist rect").count() == 30

    # CSV of the shown rows
    with page.expect_download() as dl:
        page.click("#csv")
    path = tmp_path / "samples.csv"
    dl.value.save_as(path)
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["text"] for r in got] == distinct["text"].tolist()
    for r, want in zip(got, distinct.itertuples()):
        assert float(r["distance"]) == pytest.approx(want.distance, rel=1e-6)
        assert (int(r["matched_pos"]), r["in_preimage"], r["valid"]) == (
            want.matched_pos, str(bool(want.distance <= 0.1)).lower(), str(bool(want.valid)).lower())

    # pin it; a second view at layer 0's head on the query letter; pin that too
    page.click("#pin")
    page.select_option("#site", "blocks.0.attn.hook_result[0]")
    page.fill("#position", "c")
    _sample(page)
    assert page.text_content("#current .query .tok.qpos") == "x"
    page.click("#pin")
    pinned = page.locator(".column.pinned")
    assert pinned.count() == 2
    a, b = pinned.nth(0).bounding_box(), pinned.nth(1).bounding_box()
    assert b["x"] >= a["x"] + a["width"] - 1 and abs(a["y"] - b["y"]) < 2  # side by side
    assert "blocks.1.attn.hook_result[0]" in pinned.nth(0).text_content()
    assert "blocks.0.attn.hook_result[0]" in pinned.nth(1).text_content()

    # two bad inputs: a message in the page, and the next good request works
    page.fill("#query", "xy#x|x:2")
    _sample(page)
    assert "not input characters" in page.text_content("#error") and page.is_visible("#error")
    page.fill("#query", QUERY)
    page.fill("#position", "40")
    _sample(page)
    assert "out of range" in page.text_content("#error")
    page.fill("#position", ":")
    _sample(page)
    assert not page.is_visible("#error") and page.locator("#current .sample-row").count() > 0

    # attention patterns tab
    page.click("#tabs button[data-tab=attention]")
    page.wait_for_selector("table.attn")
    assert page.locator("table.attn tr").count() == len(QUERY) + 3  # header + BOS..EOS
    page.click("#tabs button[data-tab=preimage]")

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("TL_INVERSION_SCREENSHOT_DIR"):
        out = Path(os.environ["TL_INVERSION_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "viewer.png")
