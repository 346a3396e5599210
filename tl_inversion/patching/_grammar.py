"""The short notation's grammar: components, positions, input suffixes (text <-> parts).

Split from :mod:`tl_inversion.patching.notation`, which holds the data classes built from
these parts (nodes, groups, edges, circuits) and position resolution; the grammar itself is
written out in that module's docstring.
"""

from __future__ import annotations

import re
from typing import Any, Union

from tl_inversion.errors import NotationError
from tl_inversion.model.sites import Site, SiteError, parse_site

PositionLike = Union[int, str]
INPUTS = ("q", "k", "v", "resid")


# Component notation ---------------------------------------------------------------------

_HEAD_RES = (
    re.compile(r"^a(?P<layer>\d+)\.(?P<head>\d+)$"),
    re.compile(r"^(?P<layer>\d+)\.(?P<head>\d+)$"),
    re.compile(r"^L(?P<layer>\d+)H(?P<head>\d+)$"),
)
_ATTN_RE = re.compile(r"^a(?P<layer>\d+)$")
_MLP_RE = re.compile(r"^(?:m|mlp)(?P<layer>\d+)$")
_RESID_RE = re.compile(r"^resid_(?P<kind>pre|mid|post)\.?(?P<layer>\d+)$")
_EMBED_NAMES = {"e_tok": "hook_embed", "embed": "hook_embed", "e_pos": "hook_pos_embed", "pos_embed": "hook_pos_embed"}
_INPUT_SUFFIX_RE = re.compile(r"^(?P<comp>.+)\.(?P<input>[qkv])$")
_HOOK_RESULT_RE = re.compile(r"^blocks\.(\d+)\.attn\.hook_(?:result|z)$")

GRAMMAR_HINT = (
    "write e_tok, e_pos, aL (all heads of layer L), aL.H / L.H / LxHy (one head), mL (MLP out), "
    "resid_pre.L / resid_mid.L / resid_post.L, or a TransformerLens hook name with an optional [head]; "
    "then optionally @positions, e.g. 'a1@:', '0.1@tc', 'e_pos@tc,:', 'blocks.0.attn.hook_z[1]@-1'"
)


def parse_component(text: str) -> Site:
    """Parse the component part of a node (no positions, no input suffix) into a site.

    Args:
        text: e.g. ``"a1"``, ``"1.0"``, ``"L1H0"``, ``"m0"``, ``"e_pos"``, ``"resid_post.1"``
            or a hook name such as ``"blocks.0.attn.hook_z[1]"``.

    Returns:
        The site the component names.

    Raises:
        NotationError: the text fits none of the forms of the grammar (see module docstring).
    """
    t = text.strip()
    if not t:
        raise NotationError(f"empty component; {GRAMMAR_HINT}")
    if t in _EMBED_NAMES:
        return Site(_EMBED_NAMES[t])
    for rx in _HEAD_RES:
        m = rx.match(t)
        if m:
            return Site(f"blocks.{int(m['layer'])}.attn.hook_result", int(m["head"]))
    m = _ATTN_RE.match(t)
    if m:
        return Site(f"blocks.{int(m['layer'])}.attn.hook_result")
    m = _MLP_RE.match(t)
    if m:
        return Site(f"blocks.{int(m['layer'])}.hook_mlp_out")
    m = _RESID_RE.match(t)
    if m:
        return Site(f"blocks.{int(m['layer'])}.hook_resid_{m['kind']}")
    if t.startswith(("hook_", "blocks.", "ln_final", "unembed", "embed.", "pos_embed.")):
        try:
            return parse_site(t)
        except SiteError as e:
            raise NotationError(f"cannot parse component {text!r}: {e}") from None
    raise NotationError(f"unknown component {text!r}; {GRAMMAR_HINT}")


def format_component(site: Site) -> str:
    """The short form of a site (inverse of :func:`parse_component`)."""
    for short, hook in (("e_tok", "hook_embed"), ("e_pos", "hook_pos_embed")):
        if site.hook == hook and site.head is None:
            return short
    m = re.match(r"^blocks\.(\d+)\.attn\.hook_result$", site.hook)
    if m:
        return f"a{m.group(1)}" if site.head is None else f"a{m.group(1)}.{site.head}"
    m = re.match(r"^blocks\.(\d+)\.hook_mlp_out$", site.hook)
    if m and site.head is None:
        return f"m{m.group(1)}"
    m = re.match(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$", site.hook)
    if m and site.head is None:
        return f"resid_{m.group(2)}.{m.group(1)}"
    return str(site)


def _parse_position(text: str) -> PositionLike:
    t = text.strip()
    if not t:
        raise NotationError("empty position in a position list (write e.g. '@tc,:' or '@-1')")
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    return t


def _parse_positions(text: str | None) -> tuple[PositionLike, ...] | None:
    if text is None:
        return None
    t = text.strip()
    if t == "*" or t == "":
        return None
    # A lone "," would be a position named ","; allow it only as the whole list.
    parts = [t] if t == "," else t.split(",")
    return tuple(_parse_position(p) for p in parts)


def _format_positions(positions: tuple[PositionLike, ...] | None) -> str:
    return "" if positions is None else "@" + ",".join(str(p) for p in positions)


def _normalise_positions(positions: Any) -> tuple[PositionLike, ...] | None:
    if positions is None:
        return None
    if isinstance(positions, (int, str)):
        positions = (positions,)
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise NotationError(f"a position is an int or a name, got {p!r}")
        if isinstance(p, str) and re.fullmatch(r"-?\d+", p.strip()):
            p = int(p)
        out.append(p)
    if not out:
        raise NotationError("an empty position list; use None (or '*') for every position")
    return tuple(out)



def _split_node(spec: str) -> tuple[str, str | None, str | None]:
    """Split ``comp[.input][@positions]`` into its three parts."""
    text = spec.strip()
    if "@" in text:
        comp, positions = text.split("@", 1)
        if "@" in positions:
            raise NotationError(f"{spec!r} has two '@'; write one position list, e.g. 'a1@tc,:'")
    else:
        comp, positions = text, None
    comp = comp.strip()
    m = _INPUT_SUFFIX_RE.match(comp)
    input_ = None
    if m:  # no TransformerLens hook name ends in ".q"/".k"/".v", so this is an input suffix
        comp, input_ = m["comp"], m["input"]
    if not comp:
        raise NotationError(f"{spec!r} has no component before '@'; {GRAMMAR_HINT}")
    return comp, input_, positions
