"""What the live viewer's JSON endpoints compute: :class:`ViewerSession` (no HTTP here).

The HTTP layer (:mod:`tl_inversion.viewer.server`) parses a request body into a dict and
calls one method; the method checks every field, runs the probed model / the decoders and
returns a JSON-able dict. Bad input raises :mod:`tl_inversion.errors` classes whose message
is shown in the page as it is.

Sampling goes through :func:`tl_inversion.inversion.sampling.sample_preimage` (InversionView,
Huang et al. 2024, Sec. 3): a pool of ``n_samples`` candidates split evenly over the
``(temperature, noise)`` settings (``n_repeats=1``, ``batch_size = ceil(n / settings)``),
every candidate verified against the probed model. The page shows the pool's distinct
candidates sorted by distance (at most :data:`MAX_ROWS_SHOWN`; a larger pool is shown
through the paper's display sample, ``result.display_sample``).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.inversion.sampling import sample_preimage
from tl_inversion.model.sites import parse_site

__all__ = ["AUTO_SCHEDULE", "MAX_ROWS_SHOWN", "MAX_SAMPLES", "ViewerSession", "sampling_args"]

#: The paper's ``(temperature, noise)`` settings, used for ``schedule="auto"``.
AUTO_SCHEDULE: tuple[tuple[float, float], ...] = ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))
#: Most candidates one request may sample (a larger count is refused with this cap named).
MAX_SAMPLES = 4096
#: Most distinct candidates shown; a larger pool is shown through the paper's display sample.
MAX_ROWS_SHOWN = 300
#: Most fixed temperatures in one schedule.
MAX_TEMPERATURES = 16
DEFAULT_EPSILON = {"l2": 0.1, "cosine": 0.25}
HIST_BINS = 30


def _field(payload: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = payload.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise InputTypeError(f"field {name!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def sampling_args(payload: dict[str, Any]) -> dict[str, Any]:
    """The :func:`sample_preimage` arguments a ``/api/sample`` request asks for.

    Args:
        payload: the request: ``text`` (str), ``site`` (str), ``position`` (name or index),
            ``schedule`` (``"auto"``, or a list / comma-separated string of fixed
            temperatures, noise 0), ``metric`` (``"l2"`` or ``"cosine"``), ``epsilon``
            (number or null for the metric's paper value), ``n_samples`` (1..MAX_SAMPLES,
            default 256), ``seed`` (int, default 0).

    Returns:
        ``{"query", "site", "position", "schedule", "n_repeats", "batch_size", "epsilon",
        "metric", "seed"}``, ready for ``sample_preimage(bank, model, task, **args)``.

    Raises:
        InputValueError: an empty input, a count outside 1..MAX_SAMPLES (the message names
            the cap), an unknown metric, a bad temperature or epsilon.
        InputTypeError: a field of the wrong type.
    """
    if not isinstance(payload, dict):
        raise InputTypeError(f"the request body must be a JSON object, got {type(payload).__name__}")
    text = _field(payload, "text", (str,), "")
    if not text.strip():
        raise InputValueError("the input is empty: type an input for the task")
    site = _field(payload, "site", (str,), "")
    if not site:
        raise InputValueError("no site given: pick one of the bank's sites")
    position = _field(payload, "position", (str, int), "")
    if isinstance(position, str):
        position = position.strip()
        if not position:
            raise InputValueError("no position given: pick a named position or type an index")
        if position.lstrip("-").isdigit():
            position = int(position)
    n = _field(payload, "n_samples", (int,), 256)
    if not 1 <= n <= MAX_SAMPLES:
        raise InputValueError(f"number of samples must be 1..{MAX_SAMPLES} (the viewer's cap), got {n}; "
                              "sample larger pools with `tl-inversion sample`")
    metric = _field(payload, "metric", (str,), "l2")
    if metric not in DEFAULT_EPSILON:
        raise InputValueError(f"metric must be 'l2' (||z - z_q|| / ||z_q||) or 'cosine' (1 - cos), got {metric!r}")
    eps = _field(payload, "epsilon", (int, float, str), None)
    if isinstance(eps, str):
        eps = eps.strip() or None
    try:
        eps = DEFAULT_EPSILON[metric] if eps is None else float(eps)
    except ValueError:
        raise InputValueError(f"epsilon must be a number, got {payload.get('epsilon')!r}") from None
    if not (math.isfinite(eps) and eps > 0):
        raise InputValueError(f"epsilon must be a positive number, got {payload.get('epsilon')!r}")
    schedule = _schedule(payload.get("schedule", "auto"))
    seed = _field(payload, "seed", (int,), 0)
    return {"query": text, "site": site, "position": position, "schedule": schedule, "n_repeats": 1,
            "batch_size": math.ceil(n / len(schedule)), "epsilon": eps, "metric": metric, "seed": seed}


def _schedule(value: Any) -> list[tuple[float, float]]:
    if value is None or value == "auto" or value == "":
        return list(AUTO_SCHEDULE)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items or len(items) > MAX_TEMPERATURES:
        raise InputValueError(f"schedule must be 'auto' or 1..{MAX_TEMPERATURES} temperatures, got {value!r}")
    out = []
    for item in items:
        try:
            t = float(item)
        except (TypeError, ValueError):
            raise InputValueError(f"temperature {item!r} is not a number (give e.g. '0.5, 1')") from None
        if not (math.isfinite(t) and 0 <= t <= 10):
            raise InputValueError(f"temperatures must lie in 0..10 (0: greedy), got {item!r}")
        out.append((t, 0.0))
    return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


class ViewerSession:
    """The probed model, its decoder bank and the task, with the viewer's endpoints.

    Not thread-safe: the server calls one method at a time (behind its lock).

    Args:
        model: the probed model (HookedTransformer or TransformerBridge).
        bank: a :class:`~tl_inversion.decoding.bank.DecoderBank` trained on ``model``.
        task: the task object (encoding, named positions, grammar; features from its
            default evaluation plan, if any).
        default_query: the input the page starts with.
    """

    def __init__(self, model: Any, bank: Any, task: Any, default_query: str = "") -> None:
        self.model, self.bank, self.task = model, bank, task
        self.default_query = default_query
        self.features = _task_features(task)

    # /api/info ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls.

        Returns:
            ``{"task", "sites", "positions", "n_ctx", "n_layers", "n_heads", "input_chars",
            "default_query", "default_epsilon", "max_samples", "max_rows_shown",
            "auto_schedule", "features"}``; each site ``{"name", "head"}`` (``head`` is the
            head index of a per-head attention site, else null).
        """
        chars = getattr(self.task, "chars", None)
        special = {getattr(self.task, k, None) for k in ("bos", "eos", "pad")}
        sites = []
        for s in self.bank.sites:
            head_site = s.head is not None and s.hook.endswith(("attn.hook_result", "attn.hook_z"))
            sites.append({"name": str(s), "head": s.head if head_site else None, "layer": s.layer})
        return {
            "task": getattr(self.task, "name", "task"),
            "sites": sites,
            "positions": list(getattr(self.task, "named_positions", {}) or {}),
            "n_ctx": int(self.task.n_ctx),
            "n_layers": int(self.model.cfg.n_layers),
            "n_heads": int(self.model.cfg.n_heads),
            "input_chars": None if chars is None else "".join(c for c in chars if c not in special),
            "default_query": self.default_query,
            "default_epsilon": DEFAULT_EPSILON,
            "max_samples": MAX_SAMPLES,
            "max_rows_shown": MAX_ROWS_SHOWN,
            "auto_schedule": [list(t) for t in AUTO_SCHEDULE],
            "features": list(self.features),
        }

    # /api/sample --------------------------------------------------------------------
    def sample(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Sample and verify the preimage of the request's query (see :func:`sampling_args`).

        Returns:
            ``{"query", "rows", "pool", "consistency", "settings", "warnings", "note",
            "elapsed_s"}``: ``query`` has the token strings, the queried position and, for
            a head site, that head's attention weights from the queried position; ``rows``
            the shown candidates sorted by distance (``text``, ``tokens``, ``distance``
            (null for inf), ``matched_pos``, ``in_preimage``, ``valid``, ``count``,
            ``colour``); ``pool`` the whole pool's numbers and histogram of D.

        Raises:
            InputValueError, InputTypeError, SiteError, PositionError: bad request fields,
                characters outside the vocabulary, a site the bank does not cover, a
                position outside the input.
        """
        args = sampling_args(payload)
        self.bank.lookup(args["site"])  # SiteError naming the bank's sites, before any work
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = sample_preimage(self.bank, self.model, self.task, **args)
        elapsed = time.perf_counter() - t0
        df = result.df
        distinct = df[~df["duplicate"].astype(bool)]
        note = ""
        if len(distinct) > MAX_ROWS_SHOWN:
            shown = result.display_sample(k=MAX_ROWS_SHOWN).df
            note = (f"showing {len(shown)} of {len(distinct)} distinct samples, drawn as in the paper "
                    "(about 60-80% inside epsilon); the histogram covers the whole pool")
        else:
            shown = distinct
        vocab = list(result.vocab)
        rows = [{
            "text": r.text, "tokens": [vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in r.tokens],
            "distance": _finite(r.distance), "matched_pos": int(r.matched_pos), "in_preimage": bool(r.in_preimage),
            "valid": bool(r.valid), "count": int(r.count),
            "colour": None if r.colour is None else [round(float(c), 5) for c in r.colour],
        } for r in shown.itertuples(index=False)]
        site = parse_site(args["site"])
        q_tokens = list(result.query_tokens)
        n_show = _shown_length(q_tokens, result.position, set(result.special_ids))
        attention = None
        if site.head is not None and site.hook.endswith(("attn.hook_result", "attn.hook_z")):
            pattern = self._patterns(torch.tensor([q_tokens]))[site.layer][site.head]
            attention = [round(float(a), 5) for a in pattern[result.position][:n_show]]
        dist = df["distance"].to_numpy(dtype=np.float64)
        finite = dist[np.isfinite(dist)]
        hi = max(float(finite.max()) if len(finite) else 1.0, args["epsilon"] * 1.05)
        counts, edges = np.histogram(finite, bins=HIST_BINS, range=(0.0, hi))
        return {
            "query": {"text": result.query_text, "tokens": [vocab[t] for t in q_tokens[:n_show]],
                      "position": int(result.position), "attention": attention, "site": str(result.site)},
            "rows": rows,
            "pool": {"n": int(len(df)), "n_distinct": int(len(distinct)),
                     "in_preimage_fraction": float(df["in_preimage"].mean()),
                     "valid_fraction": float(df["valid"].mean()), "n_inf": int(len(dist) - len(finite)),
                     "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]}},
            "consistency": self._consistency(result),
            "settings": {"schedule": [list(s) for s in args["schedule"]], "n_repeats": 1,
                         "batch_size": args["batch_size"], "epsilon": float(result.epsilon),
                         "metric": result.metric, "seed": args["seed"], "site": str(result.site),
                         "position": payload.get("position")},
            "warnings": sorted({str(w.message) for w in caught}),
            "note": note,
            "elapsed_s": round(elapsed, 3),
        }

    def _consistency(self, result: Any) -> list[dict[str, Any]]:
        from tl_inversion.evaluation.consistency import feature_consistency

        out = []
        for name, g in self.features.items():
            try:
                row = feature_consistency([result], g).iloc[0]
            except Exception as exc:  # a feature undefined on this query: say so, keep the view
                out.append({"feature": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            g_q = row["g_query"]
            out.append({"feature": name, "query_value": g_q.item() if hasattr(g_q, "item") else g_q,
                        "n": int(row["n"]), "n_agree": int(row["n_agree"]),
                        "consistency": _finite(row["consistency"]) if row["n"] else None})
        return out

    # /api/attention -----------------------------------------------------------------
    def attention(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Attention patterns of every layer and head of the probed model for one input.

        Args:
            payload: ``{"text": str}``.

        Returns:
            ``{"tokens": [str], "patterns": [layer][head][query pos][key pos]}``, cut after
            the input's EOS (padding dropped).

        Raises:
            InputValueError: an empty input or characters the task cannot encode.
        """
        if not isinstance(payload, dict):
            raise InputTypeError("the request body must be a JSON object")
        text = _field(payload, "text", (str,), "")
        if not text.strip():
            raise InputValueError("the input is empty: type an input for the task")
        tokens = self.task.encode(text)
        ids = tokens[0].tolist()
        n = _shown_length(ids, 0, set(self.task.special_ids))
        pats = self._patterns(tokens)
        vocab = list(self.task.vocab)
        return {"tokens": [vocab[t] for t in ids[:n]],
                "patterns": [[[[round(float(a), 4) for a in row[:n]] for row in head[:n]] for head in layer]
                             for layer in pats]}

    def _patterns(self, tokens: torch.Tensor) -> list[list[list[list[float]]]]:
        """``[layer][head][q][k]`` attention weights of one row (one forward, hooks removed after)."""
        from tl_inversion.model.activations import run_with_hooks

        n_layers = int(self.model.cfg.n_layers)
        store: dict[int, torch.Tensor] = {}

        def keep(layer: int):
            def fn(act: torch.Tensor, hook: Any = None, **_: Any) -> None:
                store[layer] = act[0].detach().float().cpu()
            return fn

        hooks = [(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in range(n_layers)]
        run_with_hooks(self.model, tokens, hooks, return_type=None)
        return [store[layer].tolist() for layer in range(n_layers)]


def _shown_length(tokens: list[int], position: int, special: set[int]) -> int:
    """Length up to and including the first special token after the text (EOS), at least ``position + 1``."""
    for i in range(1, len(tokens)):
        if tokens[i] in special:
            return max(i + 1, position + 1)
    return len(tokens)


def _task_features(task: Any) -> dict[str, Any]:
    """``{name: g}`` from the task's default evaluation plan (empty when it has none)."""
    plan_fn = getattr(task, "default_plan", None)
    if plan_fn is None:
        return {}
    try:
        plan = plan_fn()
    except Exception:  # a task without a plan: no readout
        return {}
    return dict(getattr(plan, "features", None) or {})
