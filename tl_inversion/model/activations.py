"""The one module that touches TransformerLens models.

Everything here is duck-typed over the surface that ``HookedTransformer`` (TL 2.x/3.x) and
``TransformerBridge`` (TL 3.x/4.x) share: ``cfg``, ``hook_dict``, ``run_with_cache``,
``run_with_hooks``, ``blocks[l].attn.W_O``, ``eval()``/``train()``. Rules kept here:

* all requested sites come from ONE forward (``names_filter`` + ``stop_at_layer``), under
  ``torch.inference_mode()``;
* hooks are added only through ``run_with_cache``/``run_with_hooks``, which remove exactly
  the hooks they added, also when the forward raises; the user's own hooks stay;
* hook functions close over the site they serve, never dispatch on ``hook.name`` (the bridge
  calls them with its own names);
* the model is put in ``eval()`` for the call and its mode restored afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_inversion.model.sites import Site, SiteLike, parse_site, validate_sites
from tl_inversion.errors import InputValueError, SiteError

HookFn = Callable[[Tensor, Any], Tensor | None]


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a parameterless model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Put ``model`` in eval mode for the block (dropout off), then restore its mode."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def stop_layer_for(sites: Sequence[Site], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs every site's hook, or ``None`` for all layers."""
    layers = [s.layer for s in sites]
    if any(layer is None for layer in layers):
        return None
    last = max(max(layers), 0) + 1
    return None if last >= n_layers else last


def harvest(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    sites: Sequence[SiteLike],
    *,
    validate: bool = True,
) -> dict[Site, Float[Tensor, "batch pos d_site"]]:
    """Activations of many sites from one forward of the probed model.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        tokens: token ids ``[batch, pos]`` (no BOS is added: include it yourself).
        sites: sites or their string forms (see :mod:`tl_inversion.sites`).
        validate: check the sites against the model first.

    Returns:
        ``{site: tensor [batch, pos, d_site]}`` on the model's device, detached: the hook's
        value at every position, narrowed to the site's head, flattened over trailing axes.
        Per-head outputs ``attn.hook_result[h]`` are computed as ``hook_z[:, :, h] @ W_O[h]``.

    Raises:
        SiteError: a site does not fit the model (see :func:`~tl_inversion.sites.validate_site`).
        ValueError: (with ``validate``) tokens that are not ``[batch, pos]`` integer ids,
            longer than the model's context or outside its vocabulary.
    """
    if validate:
        check_tokens(model, tokens)
    sites = validate_sites(sites, model) if validate else [s if isinstance(s, Site) else parse_site(s) for s in sites]
    tokens = tokens.to(model_device(model))
    read = sorted({s.read_hook for s in sites})
    stop = stop_layer_for(sites, model.cfg.n_layers)
    with eval_mode(model), torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=list(read), stop_at_layer=stop, return_type=None)
        out: dict[Site, Tensor] = {}
        for site in sites:
            value = cache[site.read_hook]
            if site.derived_result:
                w_o = model.blocks[site.layer].attn.W_O  # [head, d_head, d_model]
                if site.head is None:
                    value = torch.einsum("bphd,hdm->bphm", value, w_o.to(value.dtype))
                else:
                    value = value[:, :, site.head] @ w_o[site.head].to(value.dtype)
            elif site.head is not None:
                value = value[:, :, site.head]
            out[site] = value.reshape(value.shape[0], value.shape[1], -1).clone()
        del cache
    return out


def activations_at(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    positions: Int[Tensor, " batch"] | Sequence[int],
    sites: Sequence[SiteLike],
    *,
    validate: bool = True,
) -> dict[Site, Float[Tensor, "batch d_site"]]:
    """Each row's activation at its own position, for many sites from one forward (the
    mechanism behind :func:`tl_inversion.verify.query_activations`, its one-site batched form).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        tokens: token ids ``[batch, pos]``.
        positions: ``[batch]`` position index read in each row.
        sites: sites or their string forms.
        validate: as :func:`harvest`.

    Returns:
        ``{site: tensor [batch, d_site]}`` on the model's device: ``harvest(...)[site][i,
        positions[i]]`` for every row ``i``. Keys are :class:`~tl_inversion.sites.Site`
        objects as :func:`harvest` makes them (validated: a negative head counted from the
        last head), not the strings given.

    Raises:
        ValueError: tokens that are not a non-empty ``[batch, pos]`` integer tensor, no
            sites, ``positions`` that are not one integer index per row (a ``[batch]``
            integer tensor or list; floats and bools are refused), or an index outside
            ``0 .. pos - 1``; and whatever :func:`harvest` raises.
    """
    if validate:
        check_tokens(model, tokens)
    if tokens.shape[0] == 0:
        raise InputValueError("tokens has no rows: give at least one input")
    if not sites:
        raise InputValueError("no sites given: name at least one site (e.g. 'blocks.0.hook_resid_post')")
    positions = torch.as_tensor(positions)
    if positions.dtype.is_floating_point or positions.dtype == torch.bool or positions.is_complex():
        raise InputValueError(f"positions must be integer indices, got {positions.dtype}")
    if positions.ndim != 1 or positions.shape[0] != tokens.shape[0]:
        raise InputValueError(f"positions must give one index per row, shape [{tokens.shape[0]}], got {list(positions.shape)}")
    positions = positions.long()
    if positions.min() < 0 or positions.max() >= tokens.shape[-1]:
        raise InputValueError(f"positions must lie in 0 .. {tokens.shape[-1] - 1}, got {positions.min()} .. {positions.max()}")
    acts = harvest(model, tokens, sites, validate=validate)
    rows = torch.arange(tokens.shape[0])
    return {site: a[rows.to(a.device), positions.to(a.device)] for site, a in acts.items()}


def check_tokens(model: Any, tokens: Int[Tensor, "batch pos"], name: str = "tokens") -> None:
    """Refuse token ids the model cannot run: not ``[batch, pos]`` integers, more positions
    than ``n_ctx``, or ids outside ``0..d_vocab-1`` (torch would only say "index out of range").

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (its ``cfg.n_ctx``, ``cfg.d_vocab``).
        tokens: token ids ``[batch, pos]``.
        name: what to call ``tokens`` in the message (e.g. ``"train_data"``).

    Raises:
        ValueError: what is wrong and the valid range.
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputValueError(f"{name} must be an integer tensor [batch, pos] of token ids, got {shape}"
                         + (f" {tokens.dtype}" if isinstance(tokens, Tensor) else ""))
    n_ctx, d_vocab = int(model.cfg.n_ctx), int(model.cfg.d_vocab)
    if tokens.shape[1] > n_ctx:
        raise InputValueError(f"{name} have {tokens.shape[1]} positions but the model's context is n_ctx={n_ctx}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise InputValueError(f"{name} hold token ids {int(tokens.min())}..{int(tokens.max())}, outside the model's "
                         f"vocabulary 0..{d_vocab - 1}")


def site_width(model: Any, site: SiteLike) -> int:
    """Width of a site's vector (e.g. ``d_model`` for residual hooks, ``d_head`` for hook_z[h])."""
    (site,) = validate_sites([site], model)
    tokens = torch.zeros(1, 1, dtype=torch.long)
    return harvest(model, tokens, [site], validate=False)[site].shape[-1]


def logits(model: Any, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the probed model under eval mode and inference mode."""
    with eval_mode(model), torch.inference_mode():
        return model(tokens.to(model_device(model)), return_type="logits")


def run_with_hooks(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[tuple[str, HookFn]],
    *,
    return_type: str | None = "logits",
) -> Tensor | None:
    """Forward with temporary hooks (e.g. patching), in eval and inference mode.

    The hooks are removed afterwards, also when the forward raises; hooks that were on
    the model before are left in place.
    """
    with eval_mode(model), torch.inference_mode():
        return model.run_with_hooks(tokens.to(model_device(model)), fwd_hooks=list(fwd_hooks), return_type=return_type)
