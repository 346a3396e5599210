"""Issue 19: left padding refused (19.1), every module's train/eval flag kept (19.3), hooks
that never fire named (19.6), string keys on results (19.7), a model name refused (19.12)."""

from __future__ import annotations

import pytest
import torch
from helpers import SPECIAL_ID

from tl_inversion.errors import InputTypeError, InputValueError, SiteError
from tl_inversion.model.activations import activations_at, harvest, logits, run_with_hooks
from tl_inversion.model.checks import check_padding
from tl_inversion.model.sites import Site, validate_sites

PAD = SPECIAL_ID  # the tiny tokenizer's PAD, which is also its BOS (like GPT-2's 50256)


def _all_modules(model):
    """Every module, a bridge's wrapped Hugging Face model included (it is no registered child)."""
    mods = {id(m): m for m in model.modules()}
    wrapped = getattr(model, "original_model", None)
    if isinstance(wrapped, torch.nn.Module):
        mods.update({id(m): m for m in wrapped.modules()})
    return list(mods.values())


# 19.1 left padding -------------------------------------------------------------------------


def test_check_padding_by_hand():
    ok = torch.tensor([[1, 2, 3, 7], [1, 7, 7, 7]])
    check_padding(ok, 7, bos_id=1)
    with pytest.raises(InputValueError, match=r"row 1 starts with the PAD id 7 \(2 of 3 rows"):
        check_padding(torch.tensor([[1, 2, 3], [7, 1, 2], [7, 7, 1]]), 7, bos_id=1)
    # PAD == BOS: one leading id is the BOS, two are padding
    check_padding(torch.tensor([[5, 1, 2], [5, 3, 5]]), 5, bos_id=5)
    with pytest.raises(InputValueError, match=r"row 0 starts with two PAD ids"):
        check_padding(torch.tensor([[5, 5, 1], [5, 3, 5]]), 5, bos_id=5)
    check_padding(torch.tensor([[7, 7]]), None)  # no PAD known: nothing to check


def test_left_padded_rows_are_refused_everywhere(tiny_model):
    unpadded = torch.tensor([[PAD, 1, 2, 3, 4, 5]])
    left = torch.tensor([[PAD, 1, 2, 3, 4, 5], [PAD, PAD, PAD, 1, 2, 3]])
    # why: TL without an attention mask gives the padded row other activations at its real tokens
    _, c_left = tiny_model.run_with_cache(left[1:, 2:], names_filter=["blocks.1.hook_resid_post"])
    _, c_ref = tiny_model.run_with_cache(torch.tensor([[PAD, 1, 2, 3]]), names_filter=["blocks.1.hook_resid_post"])
    _, c_pad = tiny_model.run_with_cache(left[1:], names_filter=["blocks.1.hook_resid_post"])
    torch.testing.assert_close(c_left["blocks.1.hook_resid_post"], c_ref["blocks.1.hook_resid_post"])
    assert (c_pad["blocks.1.hook_resid_post"][0, 2:] - c_ref["blocks.1.hook_resid_post"][0]).abs().max() > 1e-3
    site = ["blocks.1.hook_resid_post"]
    for call in (lambda t: harvest(tiny_model, t, site),
                 lambda t: activations_at(tiny_model, t, [3] * t.shape[0], site),
                 lambda t: logits(tiny_model, t),
                 lambda t: run_with_hooks(tiny_model, t, [])):
        with pytest.raises(InputValueError, match=r"row 1 starts with two PAD ids \(10.*1 of 2 rows are left-padded"):
            call(left)
        call(unpadded)  # an unpadded (or right-padded) row runs
    right = torch.tensor([[PAD, 1, 2, PAD, PAD, PAD]])
    _, c_right = tiny_model.run_with_cache(right, names_filter=site)
    torch.testing.assert_close(harvest(tiny_model, right, site)[site[0]], c_right[site[0]])
    # an explicit pad_id overrides the model's; pad_id=None switches the check off
    with pytest.raises(InputValueError, match="row 0 starts with the PAD id 1"):
        harvest(tiny_model, torch.tensor([[1, 2, 3]]), site, pad_id=1)
    harvest(tiny_model, left, site, pad_id=None)


# 19.3 train/eval flags ----------------------------------------------------------------------


def test_every_modules_flag_restored_and_all_eval_inside(tiny_model):
    mods = _all_modules(tiny_model)
    tiny_model.train()
    for i, m in enumerate(mods):  # root in train; the rest a mixed pattern (dropouts eval, ...)
        if m is not tiny_model:
            m.training = isinstance(m, torch.nn.Dropout) is False and i % 3 == 0
    before = [m.training for m in mods]
    assert any(before) and not all(before)
    seen_inside = []
    tiny_model.add_hook("blocks.0.hook_resid_post", lambda act, hook: seen_inside.append([m.training for m in mods]))
    try:
        harvest(tiny_model, torch.tensor([[PAD, 1, 2]]), ["blocks.1.hook_resid_post"])
        run_with_hooks(tiny_model, torch.tensor([[PAD, 1, 2]]), [])
    finally:
        tiny_model.reset_hooks(including_permanent=True)
    assert seen_inside and all(not any(flags) for flags in seen_inside), "every module must be in eval mode inside"
    assert [m.training for m in mods] == before


def test_bridge_wrapped_hf_model_in_train_mode_stays_so(tiny_model, tiny_model_variant):
    if not tiny_model_variant.startswith("bridge"):
        pytest.skip("only a TransformerBridge wraps a Hugging Face model")
    hf = tiny_model.original_model
    assert id(hf) not in {id(m) for m in tiny_model.modules()}  # why it needs finding
    tiny_model.eval()
    hf.train()
    flags = {name: m.training for name, m in hf.named_modules()}
    assert all(flags.values())
    harvest(tiny_model, torch.tensor([[PAD, 1, 2]]), ["blocks.0.hook_resid_post"])
    assert {name: m.training for name, m in hf.named_modules()} == flags
    assert not tiny_model.training


# 19.6 hooks that never fire -----------------------------------------------------------------


def _bypass(hook_point):
    """Make a listed hook point never fire: calling it returns its input untouched."""

    class Bypassed(type(hook_point)):
        def __call__(self, x, *args, **kwargs):
            return x

    hook_point.__class__ = Bypassed


def test_listed_hook_that_never_fires_is_named(tiny_model):
    name = "blocks.0.hook_resid_mid"
    _bypass(tiny_model.hook_dict[name])
    assert name in tiny_model.hook_dict
    tokens = torch.tensor([[PAD, 1, 2, 3]])
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[name, "blocks.0.hook_resid_post"])
    assert "blocks.0.hook_resid_post" in cache.keys() and name not in cache.keys()  # the set-up is right
    for call in (lambda: harvest(tiny_model, tokens, [name, "blocks.0.hook_resid_post"]),
                 lambda: activations_at(tiny_model, tokens, [1], [name]),
                 lambda: run_with_hooks(tiny_model, tokens, [(name, lambda act, hook: act)])):
        with pytest.raises(SiteError, match=rf"hook '{name}' is listed in the model's hook_dict but did not fire"):
            call()
    # other hooks still work
    got = harvest(tiny_model, tokens, ["blocks.0.hook_resid_post"])
    torch.testing.assert_close(got["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"])


# 19.7 string keys ---------------------------------------------------------------------------


def test_results_answer_to_site_strings(tiny_model):
    tokens = torch.tensor([[PAD, 1, 2, 3], [PAD, 4, 5, 6]])
    n = tiny_model.cfg.n_heads
    out = harvest(tiny_model, tokens, ["blocks.0.attn.hook_z[1]", "blocks.1.hook_resid_post"])
    _, cache = tiny_model.run_with_cache(tokens)
    assert set(out.keys()) == {Site("blocks.0.attn.hook_z", 1), Site("blocks.1.hook_resid_post")}
    torch.testing.assert_close(out["blocks.0.attn.hook_z[1]"], cache["blocks.0.attn.hook_z"][:, :, 1])
    torch.testing.assert_close(out[f"blocks.0.attn.hook_z[{1 - n}]"], cache["blocks.0.attn.hook_z"][:, :, 1])
    torch.testing.assert_close(out["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"])
    assert "blocks.1.hook_resid_post" in out and Site("blocks.1.hook_resid_post") in out
    assert "blocks.0.hook_resid_post" not in out and "not a site[" not in out
    assert out.get("blocks.0.hook_resid_post") is None and out.get("blocks.0.attn.hook_z[1]") is not None
    with pytest.raises(KeyError):
        out["blocks.0.hook_resid_post"]
    at = activations_at(tiny_model, tokens, [2, 3], ["blocks.1.hook_resid_post"])
    torch.testing.assert_close(at["blocks.1.hook_resid_post"][1], cache["blocks.1.hook_resid_post"][1, 3])


# 19.12 a model name where a model is expected -------------------------------------------------


@pytest.mark.parametrize("bad", ["gpt2", None, 3])
def test_model_name_instead_of_model(bad):
    tokens = torch.tensor([[1, 2]])
    for call in (lambda: harvest(bad, tokens, ["blocks.0.hook_resid_post"]),
                 lambda: activations_at(bad, tokens, [0], ["blocks.0.hook_resid_post"]),
                 lambda: validate_sites(["blocks.0.hook_resid_post"], bad),
                 lambda: run_with_hooks(bad, tokens, []),
                 lambda: logits(bad, tokens)):
        with pytest.raises(InputTypeError, match=rf"HookedTransformer or TransformerBridge, got {type(bad).__name__}"):
            call()
    if isinstance(bad, str):
        with pytest.raises(TypeError, match="load it first"):
            harvest(bad, tokens, ["blocks.0.hook_resid_post"])


def test_real_models_satisfy_the_protocol(tiny_model):
    from tl_inversion.model.protocol import ProbedModelProtocol

    assert isinstance(tiny_model, ProbedModelProtocol)
    assert not isinstance("gpt2", ProbedModelProtocol)
