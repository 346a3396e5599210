"""The one module that runs TransformerLens models.

Everything here is duck-typed over the surface that ``HookedTransformer`` (TL 2.x/3.x) and
``TransformerBridge`` (TL 3.x/4.x) share (:class:`~tl_inversion.model.protocol.ProbedModel`):
``cfg``, ``hook_dict``, ``run_with_cache``, ``run_with_hooks``, ``blocks[l].attn.W_O``,
``eval()``/``train()``. Rules kept here:

* every entry point checks the model (:func:`~tl_inversion.model.checks.check_model`), the
  tokens and their padding (:func:`~tl_inversion.model.checks.check_padding`: no left
  padding), and that every requested hook actually fired (a hook listed in ``hook_dict``
  that the architecture bypasses raises :class:`~tl_inversion.errors.SiteError`);
* all requested sites come from ONE forward (``names_filter`` + ``stop_at_layer``), under
  ``torch.inference_mode()``;
* hooks are added only through ``run_with_cache``/``run_with_hooks``, which remove exactly
  the hooks they added, also when the forward raises; the user's own hooks stay;
* hook functions close over the site they serve, never dispatch on ``hook.name`` (the bridge
  calls them with its own names);
* every module (a bridge's wrapped Hugging Face model included) is put in eval mode for the
  call and its own ``training`` flag restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_inversion.errors import InputValueError, SiteError
from tl_inversion.model.checks import check_model, check_padding, check_tokens, model_special_ids
from tl_inversion.model.protocol import ProbedModel
from tl_inversion.model.sites import Site, SiteDict, SiteLike, parse_site, validate_sites

__all__ = [
    "activations_at", "check_model", "check_padding", "check_tokens", "eval_mode", "harvest", "logits",
    "model_device", "run_with_hooks", "site_width", "stop_layer_for",
]

HookFn = Callable[[Tensor, Any], Tensor | None]
#: ``pad_id="model"``: take the PAD (and BOS) id from the model (:func:`~tl_inversion.model.checks.model_special_ids`).
PadId = int | None | Literal["model"]


def model_device(model: ProbedModel) -> torch.device:
    """The device of the model's parameters (CPU for a parameterless model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _all_modules(model: ProbedModel) -> list[torch.nn.Module]:
    """Every module of ``model`` plus those of a bridge's wrapped Hugging Face model, which
    the bridge keeps outside its registered submodules (``model.original_model``).
    """
    seen: dict[int, torch.nn.Module] = {}
    roots = [model]
    wrapped = getattr(model, "__dict__", {}).get("original_model", None)
    if wrapped is None:
        wrapped = getattr(model, "original_model", None)
    if isinstance(wrapped, torch.nn.Module):
        roots.append(wrapped)
    for root in roots:
        for m in root.modules():
            seen.setdefault(id(m), m)
    return list(seen.values())


@contextlib.contextmanager
def eval_mode(model: ProbedModel) -> Iterator[ProbedModel]:
    """Put every module of ``model`` in eval mode for the block (dropout off), then give each
    module back its own ``training`` flag.

    A bridge's wrapped Hugging Face model (``model.original_model``, not a registered
    submodule) is included. Flags are restored one by one, so a model whose root is in train
    mode but whose dropout modules are in eval mode comes back exactly so.
    """
    modules = _all_modules(model)
    flags = [(m, m.training) for m in modules]
    model.eval()
    for m in modules:
        m.training = False
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def stop_layer_for(sites: Sequence[Site], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs every site's hook, or ``None`` for all layers."""
    layers = [s.layer for s in sites]
    if any(layer is None for layer in layers):
        return None
    last = max(max(layers), 0) + 1
    return None if last >= n_layers else last


def _check_padding_for(model: ProbedModel, tokens: Tensor, pad_id: PadId, name: str = "tokens") -> None:
    if pad_id == "model":
        pad, bos = model_special_ids(model)
    else:
        pad, bos = pad_id, model_special_ids(model)[1]
    check_padding(tokens, pad, bos_id=bos, name=name)


def _not_fired(name: str) -> SiteError:
    return SiteError(
        f"hook {name!r} is listed in the model's hook_dict but did not fire during the forward pass: this "
        "architecture bypasses it (e.g. hook_pos_embed on a model with rotary positions); choose another site"
    )


def harvest(
    model: ProbedModel,
    tokens: Tensor,  # [batch, pos] ints; anything else gets check_tokens's message (not jaxtyping's)
    sites: Sequence[SiteLike],
    *,
    validate: bool = True,
    pad_id: PadId = "model",
) -> SiteDict:
    """Activations of many sites from one forward of the probed model.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        tokens: token ids ``[batch, pos]``, right-padded (no BOS is added: include it yourself).
        sites: sites or their string forms (see :mod:`tl_inversion.model.sites`).
        validate: check the model, the tokens, their padding and the sites first.
        pad_id: the PAD id for the left-padding check (:func:`~tl_inversion.model.checks.check_padding`);
            ``"model"`` (default): the model's own (its tokenizer's, or what
            :func:`~tl_inversion.model.loading.load_hf_gpt2` recorded); ``None``: no check.

    Returns:
        A :class:`~tl_inversion.model.sites.SiteDict` ``{site: tensor [batch, pos, d_site]}``
        (also indexable by the site's string) on the model's device, detached: the hook's
        value at every position, narrowed to the site's head, flattened over trailing axes.
        Per-head outputs ``attn.hook_result[h]`` are computed as ``hook_z[:, :, h] @ W_O[h]``
        (no ``b_O``: the heads' outputs plus ``b_O`` sum to ``hook_attn_out``).

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model.
        SiteError: a site does not fit the model (see :func:`~tl_inversion.model.sites.validate_site`),
            or its hook is listed but never fires on this architecture.
        InputValueError: (with ``validate``) tokens that are not ``[batch, pos]`` integer ids,
            longer than the model's context, outside its vocabulary, or left-padded (the
            message names the first such row).
    """
    check_model(model)
    if validate:
        check_tokens(model, tokens)
        _check_padding_for(model, tokens, pad_id)
    sites = validate_sites(sites, model) if validate else [s if isinstance(s, Site) else parse_site(s) for s in sites]
    tokens = tokens.to(model_device(model))
    read = sorted({s.read_hook for s in sites})
    stop = stop_layer_for(sites, model.cfg.n_layers)
    out = SiteDict(n_heads=int(model.cfg.n_heads))
    with eval_mode(model), torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=list(read), stop_at_layer=stop, return_type=None)
        for site in sites:
            try:
                value = cache[site.read_hook]
            except KeyError:
                raise _not_fired(site.read_hook) from None
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
    model: ProbedModel,
    tokens: Tensor,  # [batch, pos] ints, checked by check_tokens
    positions: Tensor | Sequence[int],  # [batch], checked against tokens with a clear message
    sites: Sequence[SiteLike],
    *,
    validate: bool = True,
    pad_id: PadId = "model",
) -> SiteDict:
    """Each row's activation at its own position, for many sites from one forward (the
    mechanism behind :func:`tl_inversion.inversion.verify.query_activations`, its one-site batched form).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        tokens: token ids ``[batch, pos]``, right-padded.
        positions: ``[batch]`` position index read in each row.
        sites: sites or their string forms.
        validate: as :func:`harvest`.
        pad_id: as :func:`harvest`.

    Returns:
        A :class:`~tl_inversion.model.sites.SiteDict` ``{site: tensor [batch, d_site]}`` on
        the model's device: ``harvest(...)[site][i, positions[i]]`` for every row ``i``. Keys
        are :class:`~tl_inversion.model.sites.Site` objects as :func:`harvest` makes them
        (validated: a negative head counted from the last head); the site's string works as
        a key too.

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model.
        InputValueError: tokens that are not a non-empty ``[batch, pos]`` integer tensor, no
            sites, ``positions`` that are not one integer index per row (a ``[batch]``
            integer tensor or list; floats and bools are refused), or an index outside
            ``0 .. pos - 1``; and whatever :func:`harvest` raises.
    """
    check_model(model)
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
        raise InputValueError(
            f"positions must give one index per row, shape [{tokens.shape[0]}], got {list(positions.shape)}"
        )
    positions = positions.long()
    if positions.min() < 0 or positions.max() >= tokens.shape[-1]:
        raise InputValueError(
            f"positions must lie in 0 .. {tokens.shape[-1] - 1}, got {positions.min()} .. {positions.max()}"
        )
    acts = harvest(model, tokens, sites, validate=validate, pad_id=pad_id)
    rows = torch.arange(tokens.shape[0])
    return SiteDict(
        ((site, a[rows.to(a.device), positions.to(a.device)]) for site, a in acts.items()), n_heads=acts.n_heads
    )


def site_width(model: ProbedModel, site: SiteLike) -> int:
    """Width of a site's vector (e.g. ``d_model`` for residual hooks, ``d_head`` for hook_z[h]).

    Raises:
        InputTypeError, SiteError: as :func:`harvest`.
    """
    (site,) = validate_sites([site], model)
    tokens = torch.zeros(1, 1, dtype=torch.long)
    return harvest(model, tokens, [site], validate=False)[site].shape[-1]


def logits(
    model: ProbedModel, tokens: Int[Tensor, "batch pos"], *, pad_id: PadId = "model"
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits ``[batch, pos, d_vocab]`` of the probed model under eval mode and inference mode.

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model.
        InputValueError: left-padded rows (see :func:`harvest` for ``pad_id``).
    """
    check_model(model)
    _check_padding_for(model, tokens, pad_id)
    with eval_mode(model), torch.inference_mode():
        return model(tokens.to(model_device(model)), return_type="logits")


def run_with_hooks(
    model: ProbedModel,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[tuple[str, HookFn]],
    *,
    return_type: str | None = "logits",
    pad_id: PadId = "model",
) -> Tensor | None:
    """Forward with temporary hooks (e.g. patching), in eval and inference mode.

    The hooks are removed afterwards, also when the forward raises; hooks that were on
    the model before are left in place.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        tokens: token ids ``[batch, pos]``, right-padded.
        fwd_hooks: ``(hook name, fn(activation, hook) -> new activation or None)`` pairs.
        return_type: as TransformerLens's (``"logits"``, ``"loss"``, ``None`` ...).
        pad_id: as :func:`harvest`.

    Returns:
        What the model's forward returns for ``return_type`` (logits ``[batch, pos, d_vocab]``).

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model.
        InputValueError: left-padded rows.
        SiteError: a named hook that did not fire during the forward (listed in
            ``hook_dict`` but bypassed by this architecture).
    """
    check_model(model)
    _check_padding_for(model, tokens, pad_id)
    fired: set[int] = set()

    def tracked(i: int, fn: HookFn) -> HookFn:
        def hook_fn(act: Tensor, hook: Any = None, **kwargs: Any) -> Tensor | None:
            fired.add(i)
            return fn(act, hook=hook, **kwargs)

        return hook_fn

    hooks = [(name, tracked(i, fn)) for i, (name, fn) in enumerate(fwd_hooks)]
    with eval_mode(model), torch.inference_mode():
        out = model.run_with_hooks(tokens.to(model_device(model)), fwd_hooks=hooks, return_type=return_type)
    for i, (name, _) in enumerate(fwd_hooks):
        if i not in fired and isinstance(name, str):
            raise _not_fired(name)
    return out
