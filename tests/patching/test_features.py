"""From reading to verifying: feature pairs and verify_feature."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from patching_common import POS

from tl_inversion.patching import (
    AnswerCheckWarning,
    feature_pairs,
    verify_feature,
)

# From reading to verifying -------------------------------------------------------------


def test_feature_pairs_properties():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (300, 8), generator=g)
    feature = lambda t: t[:, 2] % 3  # noqa: E731
    same = lambda t: t[:, 0] % 2  # noqa: E731
    change, keep = feature_pairs(tokens, feature, same=same, generator=1)
    f, s = feature(tokens), same(tokens)
    ok_c, ok_k = change >= 0, keep >= 0
    assert ok_c.float().mean() > 0.95 and ok_k.float().mean() > 0.95
    assert bool((f[change[ok_c]] != f[ok_c]).all()) and bool((s[change[ok_c]] == s[ok_c]).all())
    assert bool((f[keep[ok_k]] == f[ok_k]).all()) and bool((s[keep[ok_k]] == s[ok_k]).all())
    assert bool((keep[ok_k] != torch.arange(300)[ok_k]).all())  # never the row itself
    again = feature_pairs(tokens, feature, same=same, generator=1)
    assert torch.equal(again[0], change) and torch.equal(again[1], keep)


def test_verify_feature_table(model, data):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 10, (40, POS), generator=g)
    df = verify_feature(
        model, "e_tok@4", tokens, lambda t: t[:, 4], answers=tokens[:, -1], answer_position=-1,
        n_boot=50, progress=False, feature_name="token at 4",
    )
    assert list(df.index) == ["changes g", "keeps g"]
    # patching the token embedding from an input with the same token there changes nothing
    assert df.loc["keeps g", "effect"] == 0.0
    assert df.loc["changes g", "effect"] != 0.0 and df["feature"].iloc[0] == "token at 4"
    assert df.loc["changes g", "n"] + df.loc["changes g", "n_unpaired"] == 40


def test_verify_feature_checks_that_answers_are_token_ids(model, data):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 10, (40, POS), generator=g)
    with pytest.raises(ValueError, match="token ids of the model's vocabulary"):
        verify_feature(model, "e_tok@4", tokens, lambda t: t[:, 4], answers=tokens[:, -1] + model.cfg.d_vocab,
                       answer_position=-1, n_boot=0, progress=False)
    with pytest.raises(ValueError, match="integer token ids"):
        verify_feature(model, "e_tok@4", tokens, lambda t: t[:, 4], answers=tokens[:, -1].float(),
                       answer_position=-1, n_boot=0, progress=False)


def test_verify_feature_warns_when_the_model_does_not_predict_the_answers(model, data):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 10, (40, POS), generator=g)
    with torch.no_grad():
        logp = model(tokens)[:, -1].log_softmax(-1)
    # the least likely token of each row: its mean log-prob is below log(1 / d_vocab) by construction
    worst = logp.argmin(-1)
    assert float(logp[torch.arange(40), worst].mean()) < -np.log(model.cfg.d_vocab)
    with pytest.warns(AnswerCheckWarning, match="uniform guess"):
        verify_feature(model, "e_tok@4", tokens, lambda t: t[:, 4], answers=worst, answer_position=-1,
                       n_boot=0, progress=False)
    best = logp.argmax(-1)  # the top token is at least as likely as a uniform guess: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnswerCheckWarning)
        verify_feature(model, "e_tok@4", tokens, lambda t: t[:, 4], answers=best, answer_position=-1,
                       n_boot=0, progress=False)
