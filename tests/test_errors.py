"""The exception hierarchy of tl_inversion.errors: one base, built-in bases kept, all exported."""

from __future__ import annotations

import inspect

import pytest

import tl_inversion
from tl_inversion import errors

# the built-in exception each class must remain, so that `except ValueError` etc. keep working
BUILTIN_BASE = {
    "InputValueError": ValueError,
    "InputTypeError": TypeError,
    "ConfigError": ValueError,
    "SiteError": ValueError,
    "PositionError": ValueError,
    "NotationError": ValueError,
    "LoadError": RuntimeError,
    "MissingPathError": FileNotFoundError,
    "OutputExistsError": FileExistsError,
    "ModelMismatchError": RuntimeError,
    "BridgeUnavailableError": ImportError,
}


def test_every_error_derives_from_the_base_or_is_the_warning_base():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert inspect.isclass(cls), name
        if name == "TLInversionWarning":
            assert issubclass(cls, UserWarning)
            assert not issubclass(cls, errors.TLInversionError)
        else:
            assert issubclass(cls, errors.TLInversionError), name


def test_all_lists_every_class_of_the_module():
    defined = {n for n, v in vars(errors).items() if inspect.isclass(v) and v.__module__ == errors.__name__}
    assert defined == set(errors.__all__)


@pytest.mark.parametrize("name, base", sorted(BUILTIN_BASE.items()))
def test_builtin_bases_are_kept(name, base):
    cls = getattr(errors, name)
    assert issubclass(cls, base)
    with pytest.raises(base):
        raise cls("x") if name != "ConfigError" else cls("x", field="f")


def test_the_subclasses_nest():
    assert issubclass(errors.ConfigError, errors.InputValueError)
    for name in ("SiteError", "PositionError", "NotationError"):
        assert issubclass(getattr(errors, name), errors.InputValueError)
    assert issubclass(errors.MissingPathError, errors.LoadError)


def test_every_class_is_importable_from_the_top_level():
    for name in errors.__all__:
        assert getattr(tl_inversion, name) is getattr(errors, name)
        assert name in tl_inversion.__all__ and name in dir(tl_inversion)


def test_config_error_carries_its_field():
    e = errors.ConfigError("steps must be >= 1, got 0", field="steps")
    assert e.field == "steps" and str(e) == "steps must be >= 1, got 0"
    assert errors.ConfigError("x").field is None


def test_library_warnings_use_the_warning_base():
    from tl_inversion.inversion.queries import QueryFormatWarning, UntrainedPositionWarning

    assert issubclass(QueryFormatWarning, errors.TLInversionWarning)
    assert issubclass(UntrainedPositionWarning, errors.TLInversionWarning)
