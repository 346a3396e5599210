"""Sites, one-forward harvesting, hook hygiene, clear errors (against TL's own caches)."""

from __future__ import annotations

import pytest
import torch

from tl_inversion.model.activations import activations_at, harvest, run_with_hooks
from tl_inversion.model.sites import Site, SiteError, parse_site, validate_site, validate_sites
from tl_inversion.tasks import counting
from tl_inversion.tasks.base import PositionError


def _n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def test_parse_and_format_round_trip():
    for text in ["blocks.1.hook_resid_post", "blocks.0.attn.hook_result[0]", "blocks.0.attn.hook_z[-1]"]:
        assert str(parse_site(text)) == text
    assert parse_site("blocks.0.attn.hook_z[1]") == Site("blocks.0.attn.hook_z", 1)
    with pytest.raises(SiteError, match="cannot parse site"):
        parse_site("blocks.0.attn.hook_z[x]")


def test_unknown_hook_lists_close_names(tiny_model):
    with pytest.raises(SiteError) as e:
        validate_site("blocks.1.hook_resid_pots", tiny_model)
    assert "blocks.1.hook_resid_post" in str(e.value)
    assert "unknown hook name" in str(e.value)


def test_head_out_of_range_says_valid_range(tiny_model):
    n = tiny_model.cfg.n_heads
    with pytest.raises(SiteError, match=rf"valid heads are 0..{n - 1}"):
        validate_site(f"blocks.0.attn.hook_z[{n}]", tiny_model)
    with pytest.raises(SiteError, match="takes no head index"):
        validate_site("blocks.0.hook_resid_post[0]", tiny_model)
    assert validate_site("blocks.0.attn.hook_z[-1]", tiny_model).head == n - 1
    with pytest.raises(SiteError, match="attention weights"):
        validate_site("blocks.0.attn.hook_pattern", tiny_model)


def test_harvest_equals_full_run_with_cache(tiny_model):
    tokens = torch.randint(
        0, tiny_model.cfg.d_vocab, (3, tiny_model.cfg.n_ctx), generator=torch.Generator().manual_seed(0)
    )
    sites = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z[1]", "blocks.0.attn.hook_q[0]", "blocks.0.hook_mlp_out"]
    got = harvest(tiny_model, tokens, sites)
    _, cache = tiny_model.run_with_cache(tokens)  # full forward, every hook
    torch.testing.assert_close(got[Site("blocks.0.hook_resid_post")], cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(got[Site("blocks.1.attn.hook_z", 1)], cache["blocks.1.attn.hook_z"][:, :, 1])
    torch.testing.assert_close(got[Site("blocks.0.attn.hook_q", 0)], cache["blocks.0.attn.hook_q"][:, :, 0])
    torch.testing.assert_close(got[Site("blocks.0.hook_mlp_out")], cache["blocks.0.hook_mlp_out"])


def test_activations_at_reads_each_row_at_its_position(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (4, 8), generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([0, 7, 3, 3])
    got = activations_at(tiny_model, tokens, positions, ["blocks.1.hook_resid_mid", "blocks.0.attn.hook_z[1]"])
    _, cache = tiny_model.run_with_cache(tokens)
    for i, p in enumerate(positions.tolist()):
        torch.testing.assert_close(got[Site("blocks.1.hook_resid_mid")][i], cache["blocks.1.hook_resid_mid"][i, p])
        torch.testing.assert_close(got[Site("blocks.0.attn.hook_z", 1)][i], cache["blocks.0.attn.hook_z"][i, p, 1])
    with pytest.raises(ValueError, match="one index per row"):
        activations_at(tiny_model, tokens, positions[:3], ["blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match=r"0 \.\. 7"):
        activations_at(tiny_model, tokens, torch.tensor([0, 8, 1, 1]), ["blocks.0.hook_resid_post"])
    site = ["blocks.0.hook_resid_post"]
    for bad, message in (
        (torch.tensor([0.5, 1.0, 2.0, 3.0]), "integer indices, got torch.float32"),
        (torch.tensor([True, False, True, True]), "integer indices, got torch.bool"),
        (torch.tensor([[0, 1], [2, 3]]), r"shape \[4\], got \[2, 2\]"),
    ):
        with pytest.raises(ValueError, match=message):
            activations_at(tiny_model, tokens, bad, site)
    with pytest.raises(ValueError, match="no sites given"):
        activations_at(tiny_model, tokens, positions, [])
    with pytest.raises(ValueError, match="tokens has no rows"):
        activations_at(tiny_model, tokens[:0], positions[:0], site)
    with pytest.raises(ValueError, match=r"integer tensor \[batch, pos\]"):
        activations_at(tiny_model, tokens[0], positions, site)
    # a list of ints works, and an unvalidated head given as a string is parsed
    fast = activations_at(tiny_model, tokens, [0, 7, 3, 3], ["blocks.0.attn.hook_z[1]"], validate=False)
    torch.testing.assert_close(fast[Site("blocks.0.attn.hook_z", 1)][1], cache["blocks.0.attn.hook_z"][1, 7, 1])


def test_per_head_result_equals_transformer_lens_hook_result(tiny_model, tiny_model_variant):
    """Our z @ W_O[h] against TL's own hook_result (where set_use_attn_result works)."""
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(1))
    got = harvest(tiny_model, tokens, ["blocks.1.attn.hook_result[0]", "blocks.1.attn.hook_result[1]"])
    try:
        tiny_model.set_use_attn_result(True)
    except Exception:
        pytest.skip(f"{tiny_model_variant}: set_use_attn_result unavailable; z @ W_O is the only definition")
    try:
        _, cache = tiny_model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_result"])
    finally:
        tiny_model.set_use_attn_result(False)
    ref = cache["blocks.1.attn.hook_result"]
    torch.testing.assert_close(got[Site("blocks.1.attn.hook_result", 0)], ref[:, :, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[Site("blocks.1.attn.hook_result", 1)], ref[:, :, 1], atol=1e-5, rtol=1e-4)


def test_no_hook_left_and_user_hook_kept(tiny_model):
    fired = []
    tiny_model.add_hook("blocks.0.hook_resid_post", lambda act, hook: fired.append(1))
    before = _n_hooks(tiny_model)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    harvest(tiny_model, tokens, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_result[0]"])
    assert _n_hooks(tiny_model) == before
    with pytest.raises(SiteError):
        harvest(tiny_model, tokens, ["blocks.9.hook_resid_post"])
    assert _n_hooks(tiny_model) == before

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_with_hooks(tiny_model, tokens, [("blocks.1.hook_resid_pre", boom)])
    assert _n_hooks(tiny_model) == before
    fired.clear()
    tiny_model(tokens)
    assert fired == [1], "the user's own hook must still be there and fire once"
    tiny_model.reset_hooks(including_permanent=True)


def test_training_mode_restored(tiny_model):
    tiny_model.train()
    harvest(tiny_model, torch.zeros(1, 3, dtype=torch.long), ["blocks.0.hook_resid_post"])
    assert tiny_model.training
    tiny_model.eval()


def test_positions_by_name_and_index_and_errors():
    task = counting.make_task()
    tokens = task.encode(["aab|a:2", "abcabc|c:2"])
    # hand-counted: "B a a b | a : 2 E" -> ':' at 6, 'a' (query) at 5
    assert task.resolve_position(tokens, ":").tolist() == [6, 9]
    assert task.resolve_position(tokens, "c").tolist() == [5, 8]
    assert task.resolve_position(tokens, -1).tolist() == [32, 32]
    with pytest.raises(PositionError, match="valid -33..32"):
        task.resolve_position(tokens, 33)
    with pytest.raises(PositionError, match="named positions: 'c'"):
        task.resolve_position(tokens, "colon")


def test_validate_sites_deduplicates(tiny_model):
    sites = validate_sites(
        ["blocks.0.attn.hook_z[-1]", f"blocks.0.attn.hook_z[{tiny_model.cfg.n_heads - 1}]"], tiny_model
    )
    assert len(sites) == 1


def test_harvest_names_bad_tokens(tiny_model):
    n_ctx, d_vocab = tiny_model.cfg.n_ctx, tiny_model.cfg.d_vocab
    site = ["blocks.0.hook_resid_post"]
    with pytest.raises(ValueError, match=f"{n_ctx + 1} positions but the model's context is n_ctx={n_ctx}"):
        harvest(tiny_model, torch.ones(2, n_ctx + 1, dtype=torch.long), site)
    with pytest.raises(
        ValueError, match=f"tokens hold token ids 1..{d_vocab}, outside the model's vocabulary 0..{d_vocab - 1}"
    ):
        harvest(tiny_model, torch.tensor([[1, d_vocab]]), site)
    with pytest.raises(ValueError, match="integer tensor"):
        harvest(tiny_model, torch.ones(2, 3), site)
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        harvest(tiny_model, torch.ones(3, dtype=torch.long), site)
    assert _n_hooks(tiny_model) == 0


def test_named_position_absent_from_a_row_is_named():
    task = counting.make_task()
    rows = torch.cat([task.encode(["ddkdkkxdk|k:4"]), task.encode([""])])
    with pytest.raises(PositionError, match="position ':' does not exist in 1 of 2 rows \\(first: row 1\\)"):
        task.resolve_position(rows, ":")
    assert int(task.resolve_position(rows[:1], ":")[0]) == len("Bddkdkkxdk|k")  # index of ':' by hand


def test_as_task_takes_a_name_or_a_task():
    from tl_inversion.tasks import as_task

    assert as_task("counting").name == "counting"
    task = counting.make_task()
    assert as_task(task) is task
    with pytest.raises(ValueError, match="registered tasks: addition, counting"):
        as_task("countng")
    with pytest.raises(TypeError, match="expected a task"):
        as_task(3)
