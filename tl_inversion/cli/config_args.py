"""Command-line flags generated from a config dataclass.

Every field of a dataclass becomes one flag, ``--field-name``:

* ``bool`` fields: ``--x`` / ``--no-x``;
* ``Literal[...]`` fields: ``choices``;
* ``list[...]`` fields: several values after the flag (``nargs``); ``tuple[float, float]``
  items are written ``a,b``;
* ``X | None`` fields: ``none`` on the command line gives ``None``;
* a ``dict`` field holding the fields of another config (``TrainConfig.decoder`` holds
  ``DecoderConfig`` fields) is flattened: one flag per inner field, with the outer field's
  name as prefix (``--decoder-d-model``).

The help of each flag is the field's entry in the class docstring's Google-style ``Args:``
section, followed by the field's default. Flags have no argparse default: a flag not given
is absent from the namespace and the dataclass default applies (so no default is written
twice). This module imports nothing heavy; it only reads dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import textwrap
import types
import typing
from typing import Any, Callable, Iterable, Literal, Mapping

from tl_inversion.errors import InputTypeError

__all__ = ["ConfigArgs", "Nested", "add_config_args", "flag_name", "parse_arg_docs"]

_SECTION = re.compile(r"^(Args|Arguments|Attributes|Raises|Returns|Yields|Warns|Examples?|Notes?|Source)\s*:\s*$")
_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def flag_name(field: str, prefix: str = "") -> str:
    """The flag of a field: ``train_noise_flag`` -> ``--train-noise-flag`` (with ``prefix``
    ``decoder``: ``--decoder-d-model``).
    """
    name = f"{prefix}_{field}" if prefix else field
    return "--" + name.replace("_", "-")


def _plain(text: str) -> str:
    """Docstring markup as plain text: ``x`` -> x, :class:`~a.b.C` -> C."""
    text = re.sub(
        r":[a-z]+:`~?([^`]*)`", lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), text
    )
    text = text.replace("``", "")
    return " ".join(text.split())


def parse_arg_docs(cls: type) -> dict[str, str]:
    """The entries of a class docstring's Google-style ``Args:`` section, as plain text.

    An entry may name several fields (``n_layers, d_model: shape``): each gets the text.

    Args:
        cls: a class with a Google-style docstring.

    Returns:
        ``{field name: one-line description}``; empty when there is no ``Args:`` section.
    """
    lines = textwrap.dedent("\n".join((cls.__doc__ or "").splitlines()[1:])).splitlines()
    docs: dict[str, list[str]] = {}
    inside, names, indent = False, [], None
    for line in lines:
        stripped = line.strip()
        if _SECTION.match(stripped) and (len(line) - len(line.lstrip())) == 0:
            inside, names = stripped.startswith(("Args", "Arguments", "Attributes")), []
            indent = None
            continue
        if not inside or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth == 0:  # text after the section, at the docstring's own indentation
            inside = False
            continue
        match = _ENTRY.match(stripped) if depth == indent else None
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                docs[n] = [match.group(2)]
        else:
            for n in names:
                docs[n].append(stripped)
    return {n: _plain(" ".join(parts)) for n, parts in docs.items()}


@dataclasses.dataclass(frozen=True)
class Nested:
    """A ``dict`` field of a config that holds the fields of another config class.

    Args:
        cls: the inner config class (e.g. ``DecoderConfig``).
        exclude: inner fields the command line does not set (the program fills them).
    """

    cls: type
    exclude: tuple[str, ...] = ()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other type -> ``(type, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(tp: Any, flag: str) -> Callable[[str], Any]:
    """The argparse ``type`` converting one command-line word to a value of ``tp``."""
    if tp in (int, float, str):
        return tp
    if typing.get_origin(tp) is tuple:
        items = typing.get_args(tp)
        if not items or Ellipsis in items:
            raise InputTypeError(f"{flag}: tuple fields need fixed item types, got {tp!r}")

        def parse_tuple(word: str) -> tuple:
            parts = word.split(",")
            if len(parts) != len(items):
                raise argparse.ArgumentTypeError(f"expected {len(items)} comma-separated values, got {word!r}")
            try:
                return tuple(t(p) for t, p in zip(items, parts, strict=True))
            except ValueError:
                raise argparse.ArgumentTypeError(f"invalid value {word!r}") from None

        parse_tuple.__name__ = ",".join(t.__name__ for t in items)
        return parse_tuple
    if tp is Any:
        return str
    raise InputTypeError(f"{flag}: no command-line form for fields of type {tp!r}")


def _show(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, (list,)):
        return " ".join(_show(v) for v in value) if value else "empty"
    if value is None:
        return "none"
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    """The field's default (calling its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@dataclasses.dataclass
class ConfigArgs:
    """The flags one config class added to a parser, and how to read them back.

    Args:
        cls: the config class.
        dests: ``{argparse dest: field name}`` of the top-level fields.
        nested: ``{field name: {argparse dest: inner field name}}`` of flattened dict fields.
        flags: ``{field name: flag}``; nested inner fields under their own names too.
    """

    cls: type
    dests: dict[str, str]
    nested: dict[str, dict[str, str]]
    flags: dict[str, str]

    def values(self, ns: argparse.Namespace) -> dict[str, Any]:
        """The fields given on the command line (absent ones are left out); nested dict
        fields are the dataclass default dict updated by the inner flags given.
        """
        given = vars(ns)
        out = {field: given[dest] for dest, field in self.dests.items() if dest in given}
        defaults = {f.name: f for f in dataclasses.fields(self.cls)}
        for field, dests in self.nested.items():
            inner = {name: given[dest] for dest, name in dests.items() if dest in given}
            if inner:
                start = _default(defaults[field])
                out[field] = {**(start if isinstance(start, dict) else {}), **inner}
        return out

    def value(self, ns: argparse.Namespace, field: str) -> Any:
        """One top-level field: the flag's value if given, else the dataclass default."""
        for dest, name in self.dests.items():
            if name == field and dest in vars(ns):
                return getattr(ns, dest)
        f = {f.name: f for f in dataclasses.fields(self.cls)}[field]
        return _default(f)

    def build(self, ns: argparse.Namespace, **extra: Any) -> Any:
        """The config: the given flags, then ``extra``, over the dataclass defaults."""
        return self.cls(**{**self.values(ns), **extra})

    def flag(self, field: str) -> str | None:
        """The flag of a field (``None`` if the command line does not set it)."""
        return self.flags.get(field)


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    nested: Mapping[str, Nested] | None = None,
    aliases: Mapping[str, Iterable[str]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
) -> ConfigArgs:
    """Add one flag per field of ``cls`` to ``parser``.

    Args:
        parser: the (sub)command's parser.
        cls: a dataclass whose docstring documents each field in an ``Args:`` section.
        exclude: fields that get no flag.
        nested: ``dict`` fields flattened into the flags of an inner config class.
        aliases: extra flag spellings per field (an older name: ``{"time_limit_s":
            ["--time-limit"]}``); for a nested field use ``"outer.inner"``.
        overrides: extra ``add_argument`` keywords per field (``nargs``, ``metavar``,
            ``help``, ``required``); a required field (no default) stays required unless
            ``required=False`` is given.
        title: heading of the flags' group in ``--help`` (default: the class name).

    Returns:
        The :class:`ConfigArgs` that reads the flags back into a config.

    Raises:
        InputTypeError: ``cls`` is not a dataclass, or a field's type has no command-line form.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise InputTypeError(f"add_config_args needs a dataclass, got {cls!r}")
    nested, aliases, overrides = dict(nested or {}), dict(aliases or {}), dict(overrides or {})
    group = parser.add_argument_group(title or f"{cls.__name__} fields")
    result = ConfigArgs(cls, {}, {}, {})
    skip = set(exclude)
    for f, tp, doc in _fields(cls):
        if f.name in skip:
            continue
        if f.name in nested:
            spec = nested[f.name]
            start = _default(f)
            result.nested[f.name] = {}
            for g, gtp, gdoc in _fields(spec.cls):
                if g.name in spec.exclude:
                    continue
                inner = start.get(g.name, _default(g)) if isinstance(start, dict) else _default(g)
                flag = flag_name(g.name, f.name)
                dest = _add(
                    group,
                    flag,
                    [*aliases.get(f"{f.name}.{g.name}", ())],
                    gtp,
                    gdoc,
                    inner,
                    overrides.get(f"{f.name}.{g.name}", {}),
                )
                result.nested[f.name][dest] = g.name
                result.flags.setdefault(g.name, flag)
                result.flags[f"{f.name}.{g.name}"] = flag
            result.flags[f.name] = flag_name(f.name) + "-*"
            continue
        flag = flag_name(f.name)
        dest = _add(group, flag, [*aliases.get(f.name, ())], tp, doc, _default(f), overrides.get(f.name, {}))
        result.dests[dest] = f.name
        result.flags[f.name] = flag
    return result


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any, str]]:
    """``(field, resolved type, docstring entry)`` of each init field of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = parse_arg_docs(cls)
    return [(f, hints.get(f.name, Any), docs.get(f.name, "")) for f in dataclasses.fields(cls) if f.init]


def _add(
    group: Any, flag: str, extra_flags: list[str], tp: Any, doc: str, default: Any, override: Mapping[str, Any]
) -> str:
    """Add one flag; return its dest."""
    kw: dict[str, Any] = {"default": argparse.SUPPRESS}
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        choices = list(typing.get_args(tp))
        kw["choices"] = choices + ([None] if optional else [])
        kinds = {type(c) for c in choices}
        kw["type"] = _maybe_none(kinds.pop() if len(kinds) == 1 else str, optional)
    elif origin in (list, typing.List) or tp is list:
        (item,) = typing.get_args(tp) or (str,)
        kw["nargs"] = "*" if optional else "+"
        kw["type"] = _scalar(_unwrap_optional(item)[0], flag)
    elif origin in (dict, typing.Dict) or tp is dict:
        raise InputTypeError(f"{flag}: a dict field needs a Nested spec (the config class of its entries)")
    else:
        kw["type"] = _maybe_none(_scalar(tp, flag), optional)
    if default is dataclasses.MISSING:
        kw["required"] = True
    kw.update(override)
    help_text = override.get("help", doc) or ""
    if kw.get("required"):
        shown = "required"
    elif default is dataclasses.MISSING:
        shown = "no default"
    else:
        shown = f"default: {_show(default)}"
    kw["help"] = (f"{help_text} ({shown})" if help_text else f"({shown})").replace("%", "%%")
    if "type" in kw and kw.get("action") is not None:
        kw.pop("type")
    action = group.add_argument(flag, *extra_flags, **kw)
    return action.dest


def _maybe_none(parse: Callable[[str], Any], optional: bool) -> Callable[[str], Any]:
    """``parse``, also turning the word ``none`` into ``None`` for optional fields."""
    if not optional:
        return parse

    def parse_or_none(word: str) -> Any:
        return None if word.lower() == "none" else parse(word)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none
