"""The flag generator over config dataclasses (tl_inversion.cli.config_args), on toy configs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from tl_inversion.cli.config_args import Nested, add_config_args, flag_name, parse_arg_docs
from tl_inversion.errors import InputTypeError


@dataclass
class Inner:
    """An inner config.

    Args:
        width: the width of
            something, over two lines.
        depth: how deep.
        hidden: set by the program.
    """

    hidden: int
    width: int = 16
    depth: int = 2


@dataclass
class Toy:
    """A toy config.

    Some prose that is not an argument: ignored.

    Args:
        names: names to use (``a`` and ``b``); see :class:`~pkg.mod.Thing`.
        mode: ``"fast"`` or ``"slow"``.
        rate: a rate in %.
        flag: switch it on.
        limit: a bound, or None for none.
        pairs: (t, noise) pairs.
        inner: :class:`Inner` fields.
        tags: optional tags.

    Raises:
        ValueError: never: this entry is not a field.
    """

    names: list[str]
    mode: Literal["fast", "slow"] = "fast"
    rate: float = 0.5
    flag: bool = False
    limit: int | None = None
    pairs: list[tuple[float, float]] = field(default_factory=lambda: [(1.0, 0.0), (2.0, 0.1)])
    inner: dict = field(default_factory=lambda: {"width": 32})
    tags: list[str] | None = None


def _parser(**kw):
    p = argparse.ArgumentParser(prog="toy")
    spec = add_config_args(p, Toy, nested={"inner": Nested(Inner, exclude=("hidden",))}, **kw)
    return p, spec


def test_docs_are_read_from_the_args_section():
    docs = parse_arg_docs(Toy)
    assert docs["names"] == "names to use (a and b); see Thing."
    assert docs["mode"] == '"fast" or "slow".'
    assert "ValueError" not in docs and "Some" not in " ".join(docs)
    assert parse_arg_docs(Inner)["width"] == "the width of something, over two lines."


def test_docs_entry_naming_several_fields():
    @dataclass
    class Shape:
        """Shape.

        Args:
            n_layers, d_model: the shape.
            seed: a seed.
        """

        n_layers: int = 1
        d_model: int = 2
        seed: int = 0

    assert parse_arg_docs(Shape) == {"n_layers": "the shape.", "d_model": "the shape.", "seed": "a seed."}


def test_flag_names():
    assert flag_name("train_noise_flag") == "--train-noise-flag"
    assert flag_name("d_model", "decoder") == "--decoder-d-model"


def test_absent_flags_leave_the_dataclass_defaults():
    p, spec = _parser()
    ns = p.parse_args(["--names", "x"])
    assert spec.values(ns) == {"names": ["x"]}
    cfg = spec.build(ns)
    assert cfg == Toy(names=["x"])
    assert spec.value(ns, "rate") == 0.5 and spec.value(ns, "names") == ["x"]


def test_every_kind_of_field_parses():
    p, spec = _parser()
    ns = p.parse_args(["--names", "a", "b", "--mode", "slow", "--rate", "0.25", "--flag", "--limit", "none",
                       "--pairs", "0.5,0", "3,0.2", "--inner-depth", "5", "--tags"])
    cfg = spec.build(ns)
    assert cfg.names == ["a", "b"] and cfg.mode == "slow" and cfg.rate == 0.25 and cfg.flag is True
    assert cfg.limit is None and cfg.pairs == [(0.5, 0.0), (3.0, 0.2)] and cfg.tags == []
    # the nested dict: the dataclass default dict updated by the inner flags given
    assert cfg.inner == {"width": 32, "depth": 5}
    assert spec.build(p.parse_args(["--names", "a", "--no-flag", "--limit", "7"])).limit == 7
    assert spec.build(p.parse_args(["--names", "a", "--no-flag"])).flag is False


@pytest.mark.parametrize("argv", [["--names", "a", "--mode", "medium"], ["--names", "a", "--pairs", "1"],
                                  ["--names", "a", "--rate", "x"], ["--mode", "fast"]])
def test_bad_words_are_argparse_errors(argv, capsys):
    p, _ = _parser()
    with pytest.raises(SystemExit) as e:
        p.parse_args(argv)
    assert e.value.code == 2


def test_help_shows_each_field_with_its_default(capsys):
    p, spec = _parser(aliases={"rate": ["--speed"], "inner.width": ["--width"]})
    text = " ".join(p.format_help().split())
    assert "--names NAMES [NAMES ...] names to use (a and b); see Thing. (required)" in text
    assert "--mode {fast,slow}" in text and '"fast" or "slow". (default: fast)' in text
    assert "--rate RATE, --speed RATE a rate in %. (default: 0.5)" in text
    assert "--flag, --no-flag switch it on. (default: False)" in text
    assert "(default: none)" in text and "(default: 1.0,0.0 2.0,0.1)" in text
    # nested: the outer default dict's value where it has one, else the inner class default
    expected = "--inner-width INNER_WIDTH, --width INNER_WIDTH the width of something, over two lines. (default: 32)"
    assert expected in text
    assert "--inner-depth INNER_DEPTH how deep. (default: 2)" in text
    assert "--inner-hidden" not in text
    assert spec.flag("width") == "--inner-width" and spec.flag("mode") == "--mode" and spec.flag("nope") is None
    assert spec.build(p.parse_args(["--names", "a", "--width", "8"])).inner == {"width": 8}


def test_a_dict_field_needs_a_nested_spec():
    with pytest.raises(InputTypeError, match="Nested"):
        add_config_args(argparse.ArgumentParser(), Toy)
    with pytest.raises(InputTypeError, match="dataclass"):
        add_config_args(argparse.ArgumentParser(), dict)
