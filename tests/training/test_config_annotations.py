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
