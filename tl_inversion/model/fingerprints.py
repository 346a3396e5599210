"""Fingerprints of a probed model: architecture, weights hash, weight processing and a probe forward.

A decoder bank records these when it is trained and compares them when it is loaded
against a model, so decoders are never silently used on a model they were not trained on.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from tl_inversion.model.activations import harvest
from tl_inversion.model.protocol import ProbedModel
from tl_inversion.model.sites import SiteLike

# Fingerprints ----------------------------------------------------------------------------

_ARCH_FIELDS = (
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "n_ctx",
    "act_fn",
    "positional_embedding_type",
    "attn_only",
    "model_name",
)


def tl_version() -> str:
    """The installed TransformerLens version string."""
    from importlib.metadata import version

    return version("transformer-lens")


def weights_hash(model: ProbedModel) -> str:
    """SHA-256 over the model's parameters and buffers (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def weight_processing(model: ProbedModel) -> dict[str, Any]:
    """What is known of the model's weight processing (activations depend on it).

    ``tl_inversion.loading`` records the exact flags on models it builds; otherwise the
    model class, the bridge's compatibility mode and the normalisation type are recorded.
    """
    recorded = getattr(model, "_tl_inversion_processing", None)
    info: dict[str, Any] = dict(recorded) if isinstance(recorded, dict) else {}
    info.setdefault("normalization_type", getattr(model.cfg, "normalization_type", None))
    compat = getattr(model, "compatibility_mode", None)
    if isinstance(compat, bool):
        info.setdefault("compatibility_mode", compat)
    return info


def fingerprint(model: ProbedModel) -> dict[str, Any]:
    """What a decoder must know of its probed model to be trusted later.

    Returns:
        ``{"model_class", "tl_version", "architecture", "weights_sha256", "processing"}``.
    """
    cfg = model.cfg
    arch = {k: getattr(cfg, k) for k in _ARCH_FIELDS if hasattr(cfg, k)}
    arch = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in arch.items()}
    return {
        "model_class": type(model).__name__,
        "tl_version": tl_version(),
        "architecture": arch,
        "weights_sha256": weights_hash(model),
        "processing": weight_processing(model),
    }


def probe_signature(
    model: ProbedModel, sites: Sequence[SiteLike], *, n_pos: int = 16, n_dirs: int = 16
) -> dict[str, list[float]]:
    """What the model computes at ``sites`` on a fixed probe input, in a few numbers.

    A fixed random input (seed 0, ``min(n_ctx, n_pos)`` tokens) is run once; each site's
    vector at every position is projected on ``n_dirs`` fixed random directions. Two models
    with the same signature give the same activations (so the same preimage distances),
    whatever their class: a ``HookedTransformer`` with default processing and a
    ``TransformerBridge`` in compatibility mode agree; raw and processed weights do not.
    """
    g = torch.Generator().manual_seed(0)
    n = min(int(model.cfg.n_ctx), n_pos)
    tokens = torch.randint(int(model.cfg.d_vocab), (1, n), generator=g)
    acts = harvest(model, tokens, sites, pad_id=None)  # fixed random probe: may start with PAD by chance
    out = {}
    for site, a in acts.items():
        dirs = torch.randn(a.shape[-1], n_dirs, generator=torch.Generator().manual_seed(1))
        out[str(site)] = [round(float(v), 6) for v in (a[0].float().cpu() @ dirs).flatten()]
    return out


def compare_probe(expected: dict[str, list[float]], actual: dict[str, list[float]], rtol: float = 1e-3) -> list[str]:
    """Sites whose probe signatures differ by more than ``rtol`` (relative L2)."""
    bad = []
    for site, e in expected.items():
        a = actual.get(site)
        if a is None or len(a) != len(e):
            bad.append(site)
            continue
        e_t, a_t = torch.tensor(e), torch.tensor(a)
        if float((e_t - a_t).norm()) > rtol * max(float(e_t.norm()), 1e-8):
            bad.append(site)
    return bad


def compare_fingerprints(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences of architecture or weights (empty when they agree)."""
    problems = []
    ea, aa = expected.get("architecture", {}), actual.get("architecture", {})
    diff = {k: (ea.get(k), aa.get(k)) for k in set(ea) | set(aa) if ea.get(k) != aa.get(k) and k != "model_name"}
    if diff:
        problems.append(f"architecture differs (trained on, given): {diff}")
    if expected.get("weights_sha256") != actual.get("weights_sha256"):
        problems.append(
            f"weights differ (sha256 {str(expected.get('weights_sha256'))[:12]}... vs "
            f"{str(actual.get('weights_sha256'))[:12]}...; class {expected.get('model_class')} vs "
            f"{actual.get('model_class')}; processing {expected.get('processing')} vs {actual.get('processing')})"
        )
    return problems
