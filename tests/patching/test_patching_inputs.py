"""Issue 19.1 and 19.6 at the patching entry points: user tokens are checked (left padding,
ids the model cannot run) before any forward, and a hook that never fires is named."""

from __future__ import annotations

import pytest
import torch
from helpers import SPECIAL_ID
from patching_common import kw

from tl_inversion.errors import InputValueError, SiteError
from tl_inversion.patching import circuit_faithfulness, run_patching
from tl_inversion.patching.path import run_path_patching

PAD = SPECIAL_ID  # the tiny tokenizer's PAD, which is also its BOS (like GPT-2's)


def _calls(model):
    """Each patching entry point, called on (clean, contrast) with the shared keywords."""
    return {
        "activation": lambda c, s, **k: run_patching(model, ["a0.1@3"], c, **kw((c, s, *_ans(c)), **k)),
        "path": lambda c, s, **k: run_path_patching(model, "a0.1 -> a1.0.v", c, **kw((c, s, *_ans(c)), **k)),
        "circuit": lambda c, s, **k: circuit_faithfulness(
            model, ["e_tok", "a0.1"], c, "contrast", n_boot=0, **kw((c, s, *_ans(c)), **k)
        ),
    }


def _ans(tokens):
    n = tokens.shape[0]
    return torch.arange(n) % 10, (torch.arange(n) + 1) % 10


def _count_forwards(model):
    calls = []
    model.add_hook("blocks.0.hook_resid_pre", lambda act, hook: calls.append(1))
    return calls


@pytest.mark.parametrize("entry", ["activation", "path", "circuit"])
def test_left_padded_rows_refused_before_any_forward(tiny_model, entry):
    ok = torch.tensor([[PAD, 1, 2, 3, 4, 5], [PAD, 6, 7, 8, PAD, PAD]])  # BOS first, right padding
    left = torch.tensor([[PAD, 1, 2, 3, 4, 5], [PAD, PAD, PAD, 6, 7, 8]])  # row 1: two PADs first
    call = _calls(tiny_model)[entry]
    calls = _count_forwards(tiny_model)
    try:
        with pytest.raises(InputValueError, match=r"clean_tokens row 1 starts with two PAD ids \(10"):
            call(left, ok)
        with pytest.raises(InputValueError, match=r"source tokens row 1 starts with two PAD ids"):
            call(ok, left)
        if entry != "circuit":  # circuit_faithfulness takes no pad_id
            # the call's pad_id decides: 3 is PAD here, and row 0 of the source starts with it
            with pytest.raises(InputValueError, match=r"source tokens row 0 starts with the PAD id 3"):
                call(ok[:, 1:], torch.tensor([[3, 1, 2, 4, 5], [1, 2, 4, 5, 6]]), pad_id=3)
        with pytest.raises(InputValueError, match=r"clean_tokens hold token ids 1\.\.11, outside the model's vocab"):
            call(torch.tensor([[1, 11, 2], [1, 2, 3]]), ok[:, :3])
        assert calls == []  # refused before the model ran
        call(ok, ok.flip(0))  # right-padded rows run
        assert calls
    finally:
        tiny_model.reset_hooks(including_permanent=True)


def _bypass(hook_point):
    """Make a listed hook point never fire: calling it returns its input untouched."""

    class Bypassed(type(hook_point)):
        def __call__(self, x, *args, **kwargs):
            return x

    hook_point.__class__ = Bypassed


@pytest.mark.parametrize(
    ("entry", "hook"),
    [
        ("activation", "blocks.0.attn.hook_z"),  # the patched node's hook
        ("path", "blocks.1.attn.hook_z"),  # only frozen in step 1, never patched by the user
        ("path", "blocks.1.hook_mlp_out"),  # frozen MLP output
        ("circuit", "blocks.1.attn.hook_z"),
    ],
)
def test_hook_that_never_fires_is_named(tiny_model, entry, hook):
    clean = torch.tensor([[PAD, 1, 2, 3, 4, 5], [PAD, 6, 7, 8, 9, 1]])
    contrast = clean.flip(1)
    assert hook in tiny_model.hook_dict
    _bypass(tiny_model.hook_dict[hook])
    _, cache = tiny_model.run_with_cache(clean)
    assert hook not in cache.keys()  # the set-up: listed, but it does not fire
    with pytest.raises(SiteError, match=rf"hook '{hook}' is listed in the model's hook_dict but did not fire"):
        _calls(tiny_model)[entry](clean, contrast)
