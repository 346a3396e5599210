"""``tl-inversion demo``: preimages of a few counting queries, offline, in seconds on a CPU.

Uses the counting probed model and decoders embedded in the package (made by this
project's recipe: ``assets/counting_demo/RECIPE.md``), samples and verifies preimages for
three queries, prints what they share, and writes an HTML page.
"""

from __future__ import annotations

from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.evaluation.consistency import feature_consistency
from tl_inversion.evaluation.inverter import Inverter
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.tasks import counting

#: (query, site, position, what to look for)
DEMO_QUERIES = [
    ("ddkdkkxdk|k:4", "blocks.1.attn.hook_result[0]", ":", "layer-1 head at ':' carries the count"),
    ("ddkdkkxdk|k:4", "blocks.0.attn.hook_result[0]", "c", "layer-0 head at the query letter"),
    ("qqzqzbq|q:4", "blocks.1.hook_resid_post", ":", "residual stream after layer 1 at ':'"),
]


def asset_dir() -> Path:
    """Folder of the embedded counting demo (probed model + decoders)."""
    return Path(str(resources.files("tl_inversion") / "assets" / "counting_demo"))


def load_demo(model_class: str | None = None) -> tuple[Any, DecoderBank]:
    """The embedded probed model (HookedTransformer on TL<4, else TransformerBridge) and its decoders."""
    model = load_hf_gpt2(asset_dir() / "probed", model_class)
    bank = DecoderBank.load(asset_dir() / "decoders", model)
    return model, bank


def run_demo(html: str | Path | None = "tl_inversion_demo.html", *, n_repeats: int = 1, top: int = 8) -> list[Any]:
    """Sample, verify and print preimages for :data:`DEMO_QUERIES`; write an HTML page.

    Args:
        html: where to write the page (``None``: do not write).
        n_repeats: repeats of the paper's 4-setting schedule (64 samples each); paper: 4.
        top: rows printed per query.

    Returns:
        The :class:`~tl_inversion.inversion.result.PreimageResult` of each query.
    """
    torch.manual_seed(0)
    model, bank = load_demo()
    inverter = Inverter(model, bank, counting.make_task())  # the model is checked against the bank once
    results, fragments = [], []
    for query, site, position, note in DEMO_QUERIES:
        r = inverter.sample(query, site, position, n_repeats=n_repeats, seed=0)
        s = r.summary()
        fc = feature_consistency([r], counting.query_counts).iloc[0]
        headline = f"{query!r}  site {site}  position {position!r} ({note})"
        n_in = int(r.df["in_preimage"].sum())
        same = int(fc["n_agree"])
        stats = (f"{s['n_candidates']} samples, {n_in} within epsilon {s['epsilon']} ({n_in / s['n_candidates']:.1%}), "
                 f"{s['valid_fraction']:.0%} well-formed; in-preimage well-formed samples with the query's count: "
                 f"{same} of {int(fc['n'])}")
        print(f"\n== {headline}\n   {stats}")
        view = r.df.drop_duplicates("text")[["text", "distance", "in_preimage", "valid"]].head(top)
        print(view.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        results.append(r)
        fragments.append(f"<h2>{escape(headline)}</h2><p>{escape(stats)}</p>" + r.to_html_fragment(60))
    if html is not None:
        from tl_inversion.viewer import html_page

        path = Path(html)
        intro = ("<h1>tl_inversion demo: preimages in the counting task</h1><p>Each section: a query input, the "
                 "site and position whose activation z_q is inverted, and samples from the decoder re-run through "
                 "the probed model, sorted by D = ||z - z_q|| / ||z_q|| (InversionView, Huang et al. 2024).</p>")
        path.write_text(html_page(intro + "\n".join(fragments), title="tl_inversion demo: counting"), encoding="utf-8")
        print(f"\nwrote {path.resolve()}")
    return results
