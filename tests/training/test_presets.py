"""Named training presets (issue 20.3): the values each promises, overrides, unknown names."""

from __future__ import annotations

import pytest

from tl_inversion.errors import ConfigError
from tl_inversion.training.config import preset_config

SITES = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]


def test_cpu_preset_is_small_and_stacked():
    cfg = preset_config("cpu", SITES)
    assert (cfg.topology, cfg.stack, cfg.device, cfg.schedule) == ("per_hook", True, "cpu", "cosine")
    assert cfg.batch_size * cfg.steps <= 64 * 300  # a few minutes on 2 cores (measured in the report)
    assert cfg.decoder == {"d_model": 32, "n_layers": 2, "n_heads": 4}
    assert cfg.sites == SITES


def test_recipes_of_the_time_to_quality_benchmark():
    project, paper = preset_config("project", SITES), preset_config("paper", SITES)
    assert (project.topology, project.batch_size, project.lr, project.schedule, project.compile) == \
        ("per_hook", 1024, 2e-3, "cosine", True)
    assert (paper.topology, paper.batch_size, paper.lr, paper.schedule, paper.rebalance) == \
        ("shared", 256, 1e-4, "constant", True)


def test_overrides_win_and_presets_stay_unchanged():
    cfg = preset_config("cpu", SITES, steps=7, decoder={"d_model": 8, "n_layers": 1, "n_heads": 2})
    assert cfg.steps == 7 and cfg.decoder["d_model"] == 8
    cfg.decoder["d_model"] = 99  # a config's dict is its own
    assert preset_config("cpu", SITES).decoder["d_model"] == 32 and preset_config("cpu", SITES).steps == 300


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError) as e:
        preset_config("gpu-please", SITES)
    assert e.value.field == "preset" and "cpu" in str(e.value)
