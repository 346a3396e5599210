"""init_accepts_any: __init__ takes anything for the named fields, the fields keep their types."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from tl_inversion.errors import ConfigError, InputTypeError
from tl_inversion.training.config import TrainConfig, init_accepts_any


def test_trainconfig_init_takes_any_while_fields_keep_their_types():
    assert TrainConfig.__init__.__annotations__["time_limit_s"] is Any
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    assert fields["time_limit_s"] in (float, "float")  # what the command line reads
    assert typing.get_type_hints(TrainConfig)["lr"] is float
    assert TrainConfig(sites=["blocks.0.hook_resid_post"], time_limit_s=25).time_limit_s == 25.0
    with pytest.raises(ConfigError, match="topology must be one of"):
        TrainConfig(sites=["blocks.0.hook_resid_post"], topology="cube")


def test_unknown_names_are_refused():
    with pytest.raises(InputTypeError, match=r"has no parameters \['nope'\]"):
        @init_accepts_any("nope")
        @dataclasses.dataclass
        class C:
            x: int = 0


def test_empty_sites_and_bad_decoder_sizes_fail_when_the_config_is_built():
    site = ["blocks.0.hook_resid_post"]
    with pytest.raises(ConfigError, match="sites is empty") as e:
        TrainConfig(sites=[])
    assert e.value.field == "sites"
    with pytest.raises(ConfigError, match=r"unknown keys \['dmodel'\]; valid keys: \['d_model'") as e:
        TrainConfig(sites=site, decoder={"dmodel": 32})
    assert e.value.field == "decoder"
    with pytest.raises(ConfigError, match="n_heads=4 must divide d_model=30"):
        TrainConfig(sites=site, decoder={"d_model": 30, "n_heads": 4})
    with pytest.raises(ConfigError, match="unknown keys.*vocab_size"):
        TrainConfig(sites=site, decoder={"vocab_size": 5})  # set by train() from the task
    assert TrainConfig(sites=site, decoder={"d_model": 32, "n_heads": 4, "dropout": 0.1}).decoder["d_model"] == 32
