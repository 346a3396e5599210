"""Sites: where an activation is read, named by TransformerLens hook names.

A *site* (InversionView, Huang et al. 2024, Sec. 2) is a TransformerLens hook point,
optionally narrowed to one attention head. The activation of a site at one position is a
single vector:

=====================================  ==========================  =====================
site string                            vector at one position      width
=====================================  ==========================  =====================
``blocks.1.hook_resid_post``           the residual stream         ``d_model``
``blocks.0.attn.hook_z[0]``            head 0's mixed values       ``d_head``
``blocks.0.attn.hook_result[0]``       head 0's output z @ W_O[0]  ``d_model``
``blocks.0.attn.hook_q[0]``            head 0's query              ``d_head``
``blocks.0.attn.hook_z``               all heads, flattened        ``n_heads * d_head``
=====================================  ==========================  =====================

The one string form is ``<hook name>`` or ``<hook name>[<head>]``. Per-head hook outputs
``attn.hook_result`` are never read from the model (that would need
``set_use_attn_result``, which some bridges refuse): they are always computed as
``hook_z[..., head, :] @ W_O[head]`` (no ``b_O``), which is the definition of the per-head
output in both TransformerLens generations.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Union

from tl_inversion.errors import SiteError
from tl_inversion.model.checks import check_model
from tl_inversion.model.protocol import ProbedModel

# Hook suffixes whose value has a head axis at dim 2: [batch, pos, head, d].
PER_HEAD_SUFFIXES = (
    "attn.hook_z",
    "attn.hook_result",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
)
# Hooks that hold no vector per position: refused as sites.
NON_POSITIONAL_SUFFIXES = ("attn.hook_pattern", "attn.hook_attn_scores")

_SITE_RE = re.compile(r"^(?P<hook>[A-Za-z_][\w.]*?)(?:\[(?P<head>-?\d+)\])?$")
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")



@dataclass(frozen=True, order=True)
class Site:
    """A TransformerLens hook point, optionally one head of it.

    Args:
        hook: the TransformerLens hook name, e.g. ``"blocks.1.hook_resid_post"``.
        head: head index for per-head hooks (``attn.hook_z``, ``attn.hook_result``,
            ``attn.hook_q/k/v``, ``hook_q/k/v_input``); ``None`` reads the whole hook.
    """

    hook: str
    head: int | None = None

    def __str__(self) -> str:
        return self.hook if self.head is None else f"{self.hook}[{self.head}]"

    @property
    def layer(self) -> int | None:
        """Block index of the hook, ``-1`` for embedding hooks, ``None`` after the blocks."""
        m = _LAYER_RE.match(self.hook)
        if m:
            return int(m.group(1))
        if self.hook.startswith("hook_") or self.hook.startswith("embed") or self.hook.startswith("pos_embed"):
            return -1
        return None

    @property
    def per_head(self) -> bool:
        """Whether the hook has a head axis (dim 2 of its value)."""
        return self.hook.endswith(PER_HEAD_SUFFIXES)

    @property
    def derived_result(self) -> bool:
        """Whether the vector is computed as ``z @ W_O[head]`` instead of read."""
        return self.hook.endswith("attn.hook_result")

    @property
    def read_hook(self) -> str:
        """The hook whose value is actually cached to compute this site."""
        if self.derived_result:
            return self.hook[: -len("hook_result")] + "hook_z"
        return self.hook


SiteLike = Union[Site, str]


class SiteDict(dict):
    """A ``{Site: value}`` dict that also answers to a site's string spelling.

    Keys stay :class:`Site` objects (iteration, ``keys()``, ``items()`` and equality are a
    plain dict's); ``d["blocks.0.attn.hook_z[1]"]``, ``"blocks.0.attn.hook_z[1]" in d`` and
    ``d.get("blocks.0.attn.hook_z[1]")`` parse the string with :func:`parse_site` first.
    ``harvest`` and ``activations_at`` return one. A negative head in a string is counted
    from the last head when the dict knows ``n_heads`` (given at construction).

    Args:
        data: the ``{Site: value}`` items.
        n_heads: the model's head count, to resolve ``hook_z[-1]``; ``None``: no resolving.

    Raises:
        KeyError: (``[]``) no such site; SiteError: a string that is not a site.
    """

    def __init__(self, data: Any = (), n_heads: int | None = None) -> None:
        super().__init__(data)
        self.n_heads = n_heads

    def _key(self, key: Any) -> Any:
        if isinstance(key, str):
            key = parse_site(key)
        if isinstance(key, Site) and key.head is not None and key.head < 0 and self.n_heads:
            key = Site(key.hook, key.head + self.n_heads)
        return key

    def __getitem__(self, key: Any) -> Any:
        """The value of a site given as a :class:`Site` or its string."""
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        try:
            return super().__contains__(self._key(key))
        except SiteError:
            return False

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of a site (or its string), else ``default``."""
        try:
            key = self._key(key)
        except SiteError:
            return default
        return super().get(key, default)


def parse_site(spec: SiteLike) -> Site:
    """Parse ``"<hook>"`` or ``"<hook>[<head>]"`` into a :class:`Site`.

    Args:
        spec: a :class:`Site` (returned as is) or its string form.

    Returns:
        The site.

    Raises:
        SiteError: when the string is not of the form ``hook_name`` or ``hook_name[head]``.
    """
    if isinstance(spec, Site):
        return spec
    if not isinstance(spec, str):
        raise SiteError(f"a site is a string like 'blocks.0.attn.hook_result[0]', got {type(spec).__name__}")
    m = _SITE_RE.match(spec.strip())
    if not m:
        raise SiteError(
            f"cannot parse site {spec!r}: write a TransformerLens hook name, optionally with a "
            "head index in brackets, e.g. 'blocks.1.hook_resid_post' or 'blocks.0.attn.hook_result[0]'"
        )
    head = m.group("head")
    return Site(m.group("hook"), None if head is None else int(head))


def parse_sites(specs: Iterable[SiteLike] | SiteLike) -> list[Site]:
    """Parse one site or many; keeps order, drops duplicates."""
    if isinstance(specs, (str, Site)):
        specs = [specs]
    out: list[Site] = []
    for s in specs:
        site = parse_site(s)
        if site not in out:
            out.append(site)
    return out


def _hook_names(model: ProbedModel) -> list[str]:
    names = set(model.hook_dict.keys())
    # TransformerBridge answers to the legacy HookedTransformer names through aliases.
    for attr in ("_hook_alias_registry", "hook_aliases"):
        aliases = getattr(model, attr, None)
        if isinstance(aliases, dict):
            names.update(k for k in aliases.keys() if isinstance(k, str))
    return sorted(names)


def validate_site(site: SiteLike, model: ProbedModel) -> Site:
    """Check a site against a model's hook points and head count.

    Args:
        site: the site or its string form.
        model: a ``HookedTransformer`` or ``TransformerBridge``.

    Returns:
        The parsed, validated site (a negative head index is normalised).

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model.
        SiteError: unknown hook name (the message lists the closest valid names), a head
            index on a hook without heads, a head index out of ``range(n_heads)``, or a hook
            that holds no vector per position (attention patterns).
    """
    check_model(model)
    site = parse_site(site)
    names = _hook_names(model)
    if site.hook not in names:
        close = difflib.get_close_matches(site.hook, names, n=5, cutoff=0.6)
        hint = f" Closest valid names: {', '.join(close)}." if close else ""
        n_layers = model.cfg.n_layers
        raise SiteError(
            f"unknown hook name {site.hook!r} for this model ({n_layers} layers, {len(names)} hook points).{hint}"
        )
    if site.hook.endswith(NON_POSITIONAL_SUFFIXES):
        raise SiteError(
            f"{site.hook!r} holds attention weights [batch, head, query, key], not one vector per position; "
            "use attn.hook_z[head] or attn.hook_result[head] instead"
        )
    if site.head is not None:
        if not site.per_head:
            raise SiteError(
                f"{site.hook!r} has no head axis, so it takes no head index; per-head hooks end in "
                + ", ".join(PER_HEAD_SUFFIXES)
            )
        n_heads = _n_heads_for(site, model)
        if not -n_heads <= site.head < n_heads:
            heads = f"{n_heads} head" + ("s" if n_heads != 1 else "")
            raise SiteError(
                f"head index {site.head} out of range for {site.hook!r}: this layer has {heads}, "
                f"valid heads are 0..{n_heads - 1} (or -{n_heads}..-1, counted from the last head)"
            )
        if site.head < 0:
            site = Site(site.hook, site.head + n_heads)
    return site


def _n_heads_for(site: Site, model: ProbedModel) -> int:
    cfg = model.cfg
    if site.hook.endswith(("attn.hook_k", "attn.hook_v")):
        n_kv = getattr(cfg, "n_key_value_heads", None)
        if n_kv:
            return int(n_kv)
    return int(cfg.n_heads)


def validate_sites(sites: Iterable[SiteLike] | SiteLike, model: ProbedModel) -> list[Site]:
    """Validate many sites (see :func:`validate_site`); keeps order, drops duplicates.

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model (e.g. its name as a string).
        SiteError: as :func:`validate_site`.
    """
    check_model(model)
    out: list[Site] = []
    for s in parse_sites(sites):
        v = validate_site(s, model)
        if v not in out:
            out.append(v)
    return out


# Presets -----------------------------------------------------------------------------


def paper_counting_sites(n_layers: int = 2, n_heads: int = 1) -> list[Site]:
    """The paper's counting sites: ``blocks.0.hook_resid_pre``, then per layer the head
    outputs, ``hook_resid_mid``, ``hook_mlp_out`` and ``hook_resid_post`` (9 for 2 layers,
    1 head; InversionView Sec. 4.1).
    """
    sites = [Site("blocks.0.hook_resid_pre")]
    for layer in range(n_layers):
        sites += [Site(f"blocks.{layer}.attn.hook_result", h) for h in range(n_heads)]
        sites += [Site(f"blocks.{layer}.hook_resid_mid"), Site(f"blocks.{layer}.hook_mlp_out")]
        sites.append(Site(f"blocks.{layer}.hook_resid_post"))
    return sites


def paper_addition_sites(n_layers: int = 2, n_heads: int = 4) -> list[Site]:
    """The paper's 13 addition sites: ``blocks.0.hook_resid_pre``, then per layer the 4 head
    outputs, ``hook_resid_mid`` and ``hook_resid_post`` (InversionView Sec. 4.2).
    """
    sites = [Site("blocks.0.hook_resid_pre")]
    for layer in range(n_layers):
        sites += [Site(f"blocks.{layer}.attn.hook_result", h) for h in range(n_heads)]
        sites += [Site(f"blocks.{layer}.hook_resid_mid"), Site(f"blocks.{layer}.hook_resid_post")]
    return sites


#: The 26 IOI circuit heads of Wang et al. (2022) as (layer, head), as probed by InversionView Sec. 4.3.
IOI_PAPER_HEADS: tuple[tuple[int, int], ...] = (
    (7, 3), (7, 9), (8, 6), (8, 10), (10, 7), (11, 10), (9, 9), (9, 6), (10, 0), (9, 0), (9, 7), (10, 1), (10, 2),
    (10, 6), (10, 10), (11, 2), (11, 9), (0, 1), (3, 0), (0, 10), (5, 5), (6, 9), (5, 8), (5, 9), (2, 2), (4, 11),
)


def ioi_paper_sites() -> list[Site]:
    """The paper's IOI sites on GPT-2 small: the per-head outputs ``blocks.L.attn.hook_result[H]``
    of the 26 circuit heads of Wang et al. (2022), in the order of :data:`IOI_PAPER_HEADS`
    (InversionView Sec. 4.3; queried at S1+1, S2 and END).
    """
    return [Site(f"blocks.{layer}.attn.hook_result", head) for layer, head in IOI_PAPER_HEADS]
