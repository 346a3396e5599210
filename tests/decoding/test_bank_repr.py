"""``repr(DecoderBank)`` is one short line that names what a user needs to recognise a bank."""

from __future__ import annotations

import json

from tl_inversion.demo import asset_dir, load_demo


def test_repr_is_short_and_names_sites_shape_and_model():
    _, bank = load_demo()
    text = repr(bank)
    info = json.loads((asset_dir() / "decoders" / "bank.json").read_text())  # read without the package
    sites = [s for group in info["groups"] for s in group]
    assert "\n" not in text and len(text) < 400, text
    assert f"{len(sites)} sites" in text
    for s in sites[:3]:
        assert s in text
    assert "tensor(" not in text and "state_dict" not in text
    assert f"d_model={info['decoder_configs'][0]['d_model']}" in text
    assert f"{len(info['decoder_configs'])} decoder(s)" in text
