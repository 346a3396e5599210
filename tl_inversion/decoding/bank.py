"""DecoderBank: trained decoders for a set of sites, with what is needed to trust them.

Two topologies share one mechanism:

* ``"per_hook"`` (default): one :class:`~tl_inversion.decoder.Decoder` per site, each with a
  one-row site embedding;
* ``"shared"``: one decoder over all sites, conditioned on a site embedding, as the paper
  trained (InversionView Sec. 3).

A bank maps each site to ``(decoder, site index)`` and records the probed model's
fingerprint (architecture, weight hash, class, TL version, weight processing), the task's
vocabulary hash and special ids, ``prepend_bos`` / padding side, the position policy and
the training config. Loading onto another model or processing is an error unless
explicitly overridden (then a warning).

On disk: ``bank.json`` (configs and metadata) + ``decoders.safetensors`` (all weights),
written atomically.

Why one module of about 700 lines: every method of :class:`DecoderBank` (construction,
merge/select, lookup and padding, model checks, save/load) keeps the same invariants of
``groups``, ``widths`` and the decoder ids; save/load (about 120 lines) is the cut to make
first if it grows.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tl_inversion.decoding.decoder import Decoder, DecoderConfig
from tl_inversion.errors import InputTypeError, InputValueError, MissingPathError, ModelMismatchError
from tl_inversion.io import atomic_write_dir, atomic_write_json, plain_bool
from tl_inversion.model import fingerprints
from tl_inversion.model.sites import Site, SiteError, SiteLike, parse_site

BANK_JSON = "bank.json"
WEIGHTS = "decoders.safetensors"
FORMAT_VERSION = 1



@dataclass(repr=False)
class DecoderBank:
    """Decoders for a set of sites.

    Args:
        decoders: the decoders (one per site for ``per_hook``, one for ``shared``).
        groups: ``groups[i]`` is the list of sites decoder ``i`` covers; a site's index in
            its group is its site-embedding row.
        widths: ``{site string: activation width}`` (vectors are zero-padded to ``d_act``).
        meta: fingerprint, task info, position policy, training config (JSON-able).

    ``repr(bank)`` is one short line (topology, sites, decoder shape, probed model); the details
    are attributes: ``bank.sites``, ``bank.meta["fingerprint"]``, ``bank.training_runs()``.
    """

    decoders: list[Decoder]
    groups: list[list[Site]]
    widths: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: topology, sites (first three), decoder shape and size, probed model."""
        sites = [str(s) for s in self.sites]
        shown = ", ".join(sites[:3]) + (f", ... (+{len(sites) - 3})" if len(sites) > 3 else "")
        parts = [f"{self.topology}", f"{len(sites)} sites [{shown}]"]
        if self.decoders:
            c = self.decoders[0].cfg
            n_params = sum(p.numel() for d in self.decoders for p in d.parameters())
            parts.append(f"{len(self.decoders)} decoder(s) d_model={c.d_model} n_layers={c.n_layers} "
                         f"({n_params / 1e6:.2f}M params)")
        fp = self.meta.get("fingerprint") or {}
        arch = fp.get("architecture") or {}
        if arch:
            parts.append("probed: " + " ".join(f"{k}={arch[k]}" for k in ("n_layers", "d_model", "n_heads", "d_vocab")
                                               if k in arch))
        if fp.get("model_class"):
            parts.append(f"{fp['model_class']} TL {fp.get('tl_version', '?')}")
        if fp.get("weights_sha256"):
            parts.append(f"weights {str(fp['weights_sha256'])[:12]}")
        return f"DecoderBank({', '.join(parts)})"

    # construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        sites: Sequence[SiteLike],
        widths: dict[str, int],
        *,
        topology: str = "per_hook",
        vocab_size: int,
        n_ctx: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        meta: dict[str, Any] | None = None,
        noise_flag: bool = False,
        **decoder_kwargs: Any,
    ) -> "DecoderBank":
        """New, untrained decoders for ``sites``.

        Args:
            sites: the sites to cover.
            widths: activation width per site string.
            topology: ``"per_hook"`` (a decoder per site) or ``"shared"`` (one decoder).
            vocab_size: the probed model's vocabulary size.
            n_ctx: the probed model's context length (tokens).
            bos_id: the BOS id.
            eos_id: the EOS id.
            pad_id: the PAD id. When the three special ids are not all different (GPT-2's
                ``<|endoftext|>`` is BOS, EOS and PAD), the decoders get two extra ids
                (``vocab_size`` and ``vocab_size + 1``) for EOS and PAD, recorded in
                ``meta["decoder_ids"]``; :meth:`to_decoder_tokens` and
                :meth:`to_task_tokens` translate at the decoder's boundary.
            meta: metadata to record.
            noise_flag: give every decoder one more conditioning column, the *noise flag*
                (see :meth:`pad`): the decoders learn the exact condition (flag 0) and the
                blurred one (flag 1) in one network. Recorded as ``meta["noise_flag"]``.
            **decoder_kwargs: further :class:`DecoderConfig` fields (``d_model``, ``n_layers``...).

        Raises:
            ValueError: unknown topology or no sites.
        """
        sites = [parse_site(s) for s in sites]
        if not sites:
            raise InputValueError("a decoder bank needs at least one site")
        if topology == "per_hook":
            groups = [[s] for s in sites]
        elif topology == "shared":
            groups = [list(sites)]
        else:
            raise InputValueError(f"topology must be 'per_hook' or 'shared', got {topology!r}")
        meta = dict(meta or {})
        dec_vocab, dec_eos, dec_pad = vocab_size, eos_id, pad_id
        if len({bos_id, eos_id, pad_id}) < 3:
            dec_vocab, dec_eos, dec_pad = vocab_size + 2, vocab_size, vocab_size + 1
            meta["decoder_ids"] = {"bos": bos_id, "eos": dec_eos, "pad": dec_pad,
                                   "task_bos": bos_id, "task_eos": eos_id, "task_pad": pad_id}
        decoders = []
        for group in groups:
            cfg = DecoderConfig(
                vocab_size=dec_vocab,
                n_ctx=n_ctx,
                d_act=max(widths[str(s)] for s in group) + int(bool(noise_flag)),
                bos_id=bos_id,
                eos_id=dec_eos,
                pad_id=dec_pad,
                n_sites=len(group),
                **decoder_kwargs,
            )
            decoders.append(Decoder(cfg))
        meta["topology"] = topology
        meta["noise_flag"] = bool(noise_flag)
        return cls(decoders, groups, {str(s): int(widths[str(s)]) for s in sites}, meta)

    @classmethod
    def merge(cls, banks: Sequence["DecoderBank"], model: Any = None) -> "DecoderBank":
        """One bank from banks trained separately on the same probed model and task.

        Per-hook decoders are independent, so sites trained in separate runs (on separate
        GPUs, or added later) combine into one bank; the decoders are shared, not copied.

        Args:
            banks: two or more banks with disjoint sites.
            model: when given, every bank is checked against it (:meth:`check_model`).

        Returns:
            A bank whose ``groups`` are the inputs' groups in order; ``meta`` keeps the first
            bank's fingerprint and task, the union of probe signatures and faithfulness
            rates, and the inputs' training runs (:meth:`training_runs`: sites, config, steps;
            a merged input gives its own runs) under ``merged_from``.

        Raises:
            ValueError: fewer than two banks, a site in two banks, banks of different
                tasks (vocabulary hash, special ids, n_ctx), architectures, weights or weight
                processing (another probed model), or banks with
                and without a noise flag.
            ModelMismatchError: ``model`` is given and a bank was trained on another model.
        """
        banks = list(banks)
        if len(banks) < 2:
            raise InputValueError(f"merge needs at least two banks, got {len(banks)}")
        _check_mergeable(banks)
        first = banks[0].meta
        # a merged input contributes its own parts, so merges of merges keep every run's config
        parts: list[dict[str, Any]] = []
        for part in (p for b in banks for p in b.training_runs()):
            same = [q for q in parts if (q["train_config"], q["steps"]) == (part["train_config"], part["steps"])]
            if same:  # two pieces of one run (e.g. two selections of one bank) are one run
                same[0]["sites"] = same[0]["sites"] + part["sites"]
            else:
                parts.append(part)
        noise = {(c.get("train_noise", 0.0), c.get("train_noise_shape", "gaussian") if c.get("train_noise") else None)
                 for c in (p.get("train_config") or {} for p in parts)}
        if len(noise) > 1:
            warnings.warn(f"merging banks trained with different noise (train_noise, shape): {sorted(noise, key=str)}; "
                          "their decoders' log-probabilities are not on one footing (an evaluate report names "
                          "each setting's sites)", stacklevel=2)
        if model is not None:
            for b in banks:
                b.check_model(model)
        per_run = ("probe", "faithfulness", "train_config", "steps", "site_stats")
        meta = {k: v for k, v in first.items() if k not in per_run}
        meta["topology"] = "per_hook" if all(len(g) == 1 for b in banks for g in b.groups) else "mixed"
        meta["probe"] = {k: v for b in banks for k, v in b.meta.get("probe", {}).items()}
        meta["faithfulness"] = {k: v for b in banks for k, v in (b.meta.get("faithfulness") or {}).items()}
        meta["site_stats"] = {k: v for b in banks for k, v in (b.meta.get("site_stats") or {}).items()}
        meta["merged_from"] = parts
        return cls(
            [d for b in banks for d in b.decoders],
            [list(g) for b in banks for g in b.groups],
            {k: v for b in banks for k, v in b.widths.items()},
            meta,
        )

    def training_runs(self) -> list[dict[str, Any]]:
        """The training runs behind this bank: ``[{"sites", "train_config", "steps"}]``, one
        entry per run (a merged bank lists the runs it was merged from; :meth:`merge` takes
        entries with equal ``train_config`` and ``steps`` for one run).
        """
        if self.meta.get("merged_from"):
            return copy.deepcopy(self.meta["merged_from"])
        return [{"sites": [str(s) for s in self.sites], "train_config": self.meta.get("train_config"),
                 "steps": self.meta.get("steps")}]

    def training_config(self, site: SiteLike) -> dict[str, Any] | None:
        """The ``train_config`` of the run that trained ``site``'s decoder (see
        :meth:`training_runs`), ``None`` when the bank does not record it (a bank built
        with :meth:`create` and never trained).

        Returns:
            A copy of the :class:`~tl_inversion.training.TrainConfig` fields as the run was
            given them: its ``sites`` are the whole run's as typed (they may include sites
            since dropped by :meth:`select`, or a negative head index) and ``steps`` is the
            step budget; the steps actually trained are in :meth:`training_runs`.

        Raises:
            SiteError: a site the bank does not cover (the message lists the bank's sites).
        """
        self.lookup(site)  # a site the bank lacks is an error, not "unrecorded"
        name = str(self.resolve_site(site))
        for run in self.training_runs():
            if name in (run.get("sites") or []):
                return copy.deepcopy(run.get("train_config"))
        return None

    def load_weights_from(self, source: "DecoderBank") -> None:
        """Copy the trained weights of ``source``'s decoders into this bank's decoders of the
        same sites (a warm start: :class:`~tl_inversion.training.TrainConfig` ``init_banks``).

        ``source`` may cover more sites than this bank. Each of this bank's decoders must find
        one decoder in ``source`` covering exactly its sites, in the same order (a shared
        decoder's site list), with an equal :class:`~tl_inversion.decoder.DecoderConfig`
        (width, layers, vocabulary, activation width) and the same noise flag. Everything is
        checked before anything is copied, so a refusal leaves this bank as it was. Weights
        are cast to this bank's dtype and device; ``source`` is not changed.

        Raises:
            SiteError: ``source`` has no decoder for a site (the message lists its sites).
            ValueError: a decoder of ``source`` covers other sites (or the same in another
                order), the noise flags differ, or a config differs (the message names the
                fields).
        """
        if bool(source.noise_flag) != bool(self.noise_flag):
            raise InputValueError(
                f"the source bank was trained {'with' if source.noise_flag else 'without'} the noise flag "
                f"and this one is {'with' if self.noise_flag else 'without'} it (train_noise_flag): the "
                " decoders read a different number of conditioning columns")
        pairs = []
        for dec, group in zip(self.decoders, self.groups, strict=True):
            src, _ = source.lookup(group[0])
            src_group = source.groups[[id(d) for d in source.decoders].index(id(src))]
            if [str(s) for s in src_group] != [str(s) for s in group]:
                raise InputValueError(
                    f"cannot warm-start the decoder of {[str(s) for s in group]}: the source bank's decoder "
                    f"covers {[str(s) for s in src_group]} (topologies, site lists or their order differ)")
            if src.cfg != dec.cfg:
                diff = {f: (getattr(src.cfg, f), getattr(dec.cfg, f)) for f in asdict(dec.cfg)
                        if getattr(src.cfg, f) != getattr(dec.cfg, f)}
                fields = ", ".join(f"{k} (source {a}, here {b})" for k, (a, b) in diff.items())
                raise InputValueError(
                    f"cannot warm-start the decoder of {[str(s) for s in group]}: its config differs from "
                    f"the source's in {fields}")
            pairs.append((dec, src))
        with torch.no_grad():
            for dec, src in pairs:
                dec.load_state_dict(src.state_dict())

    def select(
        self,
        sites: Any = None,  # a site or a list of them; checked here with a clear message
        *,
        drop: Any = None,  # likewise
    ) -> "DecoderBank":
        """A bank of some of this bank's sites (the decoders are shared, not copied).

        With :meth:`merge` this combines runs: to use a newer run ``new`` for some of the
        sites of ``old``, merge ``old.select(drop=new.sites)`` with ``new`` (``new`` then
        covers only sites ``old`` has; for others, drop only the shared ones).

        Args:
            sites: the sites to keep (a site string or :class:`~tl_inversion.model.sites.Site`,
                or a list of them); give this or ``drop``, not both.
            drop: the sites to leave out (a site or a list of them).

        Returns:
            A bank with the kept decoders in this bank's order; the per-site records
            (faithfulness, probe signatures, activation statistics, ``merged_from`` parts)
            are kept for the kept sites only.

        Raises:
            ValueError: both or neither of ``sites`` / ``drop`` given, nothing would be kept,
                or a shared decoder would keep only some of its sites (its site embedding
                rows are indexed by the whole group: keep all of them or none).
            SiteError: a site the bank does not cover (the message lists the bank's sites).
        """
        if (sites is None) == (drop is None):
            raise InputValueError(
                "give the sites to keep (sites=...) or the sites to leave out (drop=...), not both or neither")
        given = sites if sites is not None else drop
        if not isinstance(given, (str, Site)) and not hasattr(given, "__iter__"):
            raise InputTypeError(f"sites / drop take a site string or a list of them, got {type(given).__name__}")
        named = set()
        for s in [given] if isinstance(given, (str, Site)) else given:
            self.lookup(s)  # a SiteError listing the bank's sites for one it lacks
            named.add(str(self.resolve_site(s)))
        keep = named if sites is not None else {str(s) for s in self.sites} - named
        if not keep:
            raise InputValueError("sites=[] keeps no site" if sites is not None
                             else f"nothing left: dropping {sorted(named)} removes every site of the bank")
        decoders, groups = [], []
        for dec, group in zip(self.decoders, self.groups, strict=True):
            kept = [s for s in group if str(s) in keep]
            if kept and len(kept) < len(group):
                raise InputValueError(
                    f"sites {', '.join(str(s) for s in group)} share one decoder (trained with topology 'shared'); "
                    f"keep all of them or none (asked to keep only {', '.join(str(s) for s in kept)})"
                )
            if kept:
                decoders.append(dec)
                groups.append(list(group))
        meta = copy.deepcopy(self.meta)
        if meta.get("topology") == "mixed":
            meta["topology"] = ("per_hook" if all(len(g) == 1 for g in groups)
                                else "shared" if len(groups) == 1 else "mixed")
        for key in ("probe", "faithfulness", "site_stats"):
            if isinstance(meta.get(key), dict):
                meta[key] = {k: v for k, v in meta[key].items() if k in keep}
        if meta.get("merged_from"):
            parts = [dict(p, sites=[s for s in p.get("sites") or [] if s in keep]) for p in meta["merged_from"]]
            meta["merged_from"] = [p for p in parts if p["sites"]]
        return DecoderBank(decoders, groups, {k: v for k, v in self.widths.items() if k in keep}, meta)

    # lookup ---------------------------------------------------------------------------
    @property
    def sites(self) -> list[Site]:
        """All sites, in training order."""
        return [s for g in self.groups for s in g]

    @property
    def topology(self) -> str:
        """``"per_hook"``, ``"shared"`` or ``"mixed"`` (a :meth:`merge` of both kinds)."""
        return str(self.meta.get("topology", "per_hook" if len(self.groups) == len(self.sites) else "shared"))

    @property
    def device(self) -> torch.device:
        """Device of the (first) decoder's parameters."""
        return next(self.decoders[0].parameters()).device

    def resolve_site(self, site: SiteLike) -> Site:
        """``site`` parsed, a negative head index counted from the probed model's last head.

        Raises:
            SiteError: ``site`` is not a site string (the bank need not cover it).
        """
        site = parse_site(site)
        n_heads = ((self.meta.get("fingerprint") or {}).get("architecture") or {}).get("n_heads")
        if site.head is not None and site.head < 0 and isinstance(n_heads, int) and site.head >= -n_heads:
            site = Site(site.hook, site.head + n_heads)
        return site

    def lookup(self, site: SiteLike) -> tuple[Decoder, int]:
        """The decoder covering ``site`` and the site's embedding row in it (a negative head
        index counts from the probed model's last head, as in :func:`~tl_inversion.sites.validate_site`).

        Raises:
            SiteError: the bank has no decoder for that site (the message lists its sites).
        """
        site = self.resolve_site(site)
        for dec, group in zip(self.decoders, self.groups, strict=True):
            if site in group:
                return dec, group.index(site)
        names = [str(s) for s in self.sites]
        close = difflib.get_close_matches(str(site), names, n=3, cutoff=0.8)
        raise SiteError(
            f"no decoder for site {str(site)!r}"
            + (f" (closest: {', '.join(map(repr, close))})" if close else "")
            + f"; this bank covers: {', '.join(names)}"
        )

    @property
    def noise_flag(self) -> bool:
        """Whether the decoders read a noise flag (trained with ``train_noise_flag``)."""
        return bool(self.meta.get("noise_flag", False))

    def check_blurred(self, blurred: Any) -> bool:
        """``blurred`` as a plain bool, refused when this bank cannot give that condition.

        Raises:
            TypeError: ``blurred`` is not True or False (NumPy / 0-dim torch booleans pass).
            ValueError: ``blurred`` is True and the bank has no :attr:`noise_flag`.
        """
        blurred = plain_bool("blurred", blurred)
        if blurred and not self.noise_flag:
            raise InputValueError("a blurred condition (blurred=True) needs a bank trained with "
                             "train_noise_flag; this bank has only the exact condition (blurred=False)")
        return blurred

    def pad(
        self, z: Float[Tensor, "batch d_site"], site: SiteLike, *,
        blurred: Any = False,  # a bool or a [batch] 0/1 tensor; checked here with a clear message
        check: bool = True,
    ) -> Float[Tensor, "batch d_act"]:
        """A site's activations as its decoder's condition ``[batch, d_act]``, on the decoder's device.

        ``z`` is zero-padded to ``d_act``. A bank with a :attr:`noise_flag` reserves the last
        column for the flag: ``blurred * ||z|| / sqrt(d_site)`` (on the scale of one
        coordinate of ``z``), 0 asks for the exact condition (sampling, faithfulness), 1 for
        the blurred one the bank's ``train_noise`` taught (completeness scoring).

        Args:
            z: ``[batch, d_site]`` activations of ``site``.
            site: the site they were read from.
            blurred: a bool for every row (NumPy and 0-d torch booleans pass), or a
                ``[batch]`` tensor of 0/1 flags.
            check: test a ``blurred`` tensor's values (a host sync; training, which draws
                the flags itself, skips it).

        Raises:
            ValueError: ``z`` is wider than the site's decoder allows, a ``blurred`` tensor
                of the wrong shape or with values other than 0/1, or a blurred row asked of
                a bank without a noise flag.
            TypeError: ``blurred`` is neither a bool nor a tensor.
        """
        dec, _ = self.lookup(site)
        d_act = dec.cfg.d_act - int(self.noise_flag)
        z = z.to(self.device, torch.float32)
        if z.shape[-1] > d_act:
            raise InputValueError(f"activation width {z.shape[-1]} exceeds the decoder's d_act {d_act} for {site}")
        if isinstance(blurred, Tensor) and blurred.ndim > 0:
            if blurred.shape != z.shape[:1] or (check and not bool(((blurred == 0) | (blurred == 1)).all())):
                raise InputValueError(f"blurred as a tensor must hold one 0/1 flag per row, shape [{z.shape[0]}]; "
                                 f"got shape {list(blurred.shape)}")
            self.check_blurred(bool(blurred.any()) if check else True)
        else:
            self.check_blurred(blurred)
        if not self.noise_flag:
            return torch.nn.functional.pad(z, (0, d_act - z.shape[-1])) if z.shape[-1] < d_act else z
        flag = torch.as_tensor(blurred, dtype=torch.float32, device=z.device).reshape(-1, 1)
        column = flag * z.norm(dim=-1, keepdim=True) / math.sqrt(z.shape[-1])
        return torch.cat([torch.nn.functional.pad(z, (0, d_act - z.shape[-1])), column], dim=-1)

    # token ids at the decoder's boundary -------------------------------------------------
    def to_decoder_tokens(self, tokens: Int[Tensor, "batch n_ctx"]) -> Int[Tensor, "batch n_ctx"]:
        """Task rows ``[BOS] x [EOS] PAD..`` in the decoders' ids (identity unless the task's
        special ids coincide: then the first special token after BOS becomes the decoders'
        EOS and every later one their PAD).
        """
        ids = self.meta.get("decoder_ids")
        if not ids:
            return tokens
        special = torch.tensor(sorted({ids["task_bos"], ids["task_eos"], ids["task_pad"]}), device=tokens.device)
        body = tokens[:, 1:]
        is_special = torch.isin(body, special)
        seen = is_special.long().cumsum(1)
        out = tokens.clone()
        out[:, 1:] = torch.where(is_special & (seen == 1), ids["eos"], torch.where(seen >= 1, ids["pad"], body))
        return out

    def to_task_tokens(self, tokens: Int[Tensor, "batch n_ctx"]) -> Int[Tensor, "batch n_ctx"]:
        """Decoder output in the task's (probed model's) ids; identity unless remapped."""
        ids = self.meta.get("decoder_ids")
        if not ids:
            return tokens
        out = tokens.clone()
        out[tokens == ids["eos"]] = ids["task_eos"]
        out[tokens == ids["pad"]] = ids["task_pad"]
        return out

    def to(self, device: str | torch.device) -> "DecoderBank":
        """Move every decoder to ``device``; returns the bank."""
        for d in self.decoders:
            d.to(device)
        return self

    def eval(self) -> "DecoderBank":
        """Put every decoder in eval mode; returns the bank."""
        for d in self.decoders:
            d.eval()
        return self

    def parameters(self):
        """All decoders' parameters (for an optimizer)."""
        return nn.ModuleList(self.decoders).parameters()

    # trust ------------------------------------------------------------------------------
    def check_model(self, model: Any, *, allow_mismatch: bool = False) -> None:
        """Refuse (or, with ``allow_mismatch``, warn about) a model other than the training one.

        The test is functional: the model must compute the same activations at the bank's
        sites on a fixed probe input (:func:`~tl_inversion.fingerprints.probe_signature`), so a
        ``HookedTransformer`` and a ``TransformerBridge`` in compatibility mode over the
        same weights are interchangeable, while another model or other weight processing
        (fold_ln, centring, raw bridge weights) is refused.

        Raises:
            ModelMismatchError: the architecture differs, or the activations differ (the
                message also reports weight-hash, class and processing differences).
        """
        expected = self.meta.get("fingerprint")
        if not expected:
            return
        actual = fingerprints.fingerprint(model)
        arch = [p for p in fingerprints.compare_fingerprints(expected, actual) if p.startswith("architecture")]
        bad_sites: list[str] = []
        if not arch and "probe" in self.meta:
            mine = {str(s) for s in self.sites}
            expected_probe = {k: v for k, v in self.meta["probe"].items() if k in mine}
            bad_sites = fingerprints.compare_probe(expected_probe, fingerprints.probe_signature(model, self.sites))
        if not arch and not bad_sites:
            return
        problems = fingerprints.compare_fingerprints(expected, actual)
        if bad_sites:
            problems.insert(0, f"activations differ at {', '.join(bad_sites)} on the probe input")
        msg = (
            "these decoders were trained on another probed model: "
            + "; ".join(problems)
            + ". Preimage distances would be meaningless. Load the model (and weight processing) the bank "
            "was trained on, or pass allow_mismatch=True to proceed with a warning."
        )
        if allow_mismatch:
            warnings.warn(msg, stacklevel=2)
        else:
            raise ModelMismatchError(msg)

    def check_task(self, task: Any) -> None:
        """Refuse a task other than the one the decoders were trained on.

        Raises:
            ValueError: the task's name, vocabulary or input length differs from the bank's
                record (the decoders would read and write other token ids).
        """
        saved = self.meta.get("task")
        if not saved:
            return
        problems = []
        if saved.get("vocab_sha256") and saved["vocab_sha256"] != task.vocab_hash():
            problems.append("vocabulary")
        if saved.get("n_ctx") is not None and int(saved["n_ctx"]) != int(task.n_ctx):
            problems.append(f"input length ({saved['n_ctx']} vs {task.n_ctx})")
        if problems:
            raise InputValueError(
                f"these decoders were trained on task {saved.get('name')!r}, not {task.name!r} "
                f"({', '.join(problems)} differ); use the task the bank was trained on"
            )

    # disk -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """``{"decoder<i>.<param>": tensor}`` on the CPU (the safetensors payload)."""
        return {f"decoder{i}.{k}": v.detach().cpu().contiguous()
                for i, d in enumerate(self.decoders) for k, v in d.state_dict().items()}

    def to_json(self) -> dict[str, Any]:
        """The ``bank.json`` payload: sites per decoder, decoder configs, widths, metadata."""
        return {
            "format_version": FORMAT_VERSION,
            "groups": [[str(s) for s in g] for g in self.groups],
            "decoder_configs": [d.cfg.to_dict() for d in self.decoders],
            "widths": self.widths,
            "meta": self.meta,
        }

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write ``bank.json`` + ``decoders.safetensors`` into folder ``path``, atomically.

        Args:
            path: target folder (replaced whole if it exists).
            dtype: store weights in this dtype (e.g. ``torch.float16`` to halve the size).
        """
        state = self.state_dict()
        if dtype is not None:
            state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}

        def fill(tmp: Path) -> None:
            save_file(state, str(tmp / WEIGHTS))
            atomic_write_json(tmp / BANK_JSON, self.to_json())

        return atomic_write_dir(path, fill)

    @classmethod
    def from_json_and_state(cls, info: dict[str, Any], state: dict[str, Tensor]) -> "DecoderBank":
        """Rebuild a bank from :meth:`to_json` and :meth:`state_dict` output.

        Raises:
            ValueError: an unsupported ``format_version``.
        """
        if info.get("format_version") != FORMAT_VERSION:
            raise InputValueError(
                f"unsupported decoder bank format {info.get('format_version')}; expected {FORMAT_VERSION}")
        decoders = []
        for i, cfg in enumerate(info["decoder_configs"]):
            dec = Decoder(DecoderConfig.from_dict(cfg))
            prefix = f"decoder{i}."
            sub = {k[len(prefix):]: v.float() if v.is_floating_point() else v
                   for k, v in state.items() if k.startswith(prefix)}
            dec.load_state_dict(sub)
            decoders.append(dec.eval())
        groups = [[parse_site(s) for s in g] for g in info["groups"]]
        return cls(decoders, groups, dict(info["widths"]), dict(info["meta"]))

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: Any = None,
        *,
        allow_mismatch: bool = False,
        device: str | torch.device = "cpu",
    ) -> "DecoderBank":
        """Load a bank saved by :meth:`save`.

        Args:
            path: the folder.
            model: the probed model to check the fingerprint against (recommended).
            allow_mismatch: warn instead of raising on a fingerprint mismatch.
            device: where to put the decoders.

        Raises:
            MissingPathError: (a ``FileNotFoundError``) the folder lacks ``bank.json`` or the weights.
            ModelMismatchError: ``model`` differs from the training model.
        """
        path = Path(path)
        if not (path / BANK_JSON).is_file() or not (path / WEIGHTS).is_file():
            raise MissingPathError(f"{path} is not a decoder bank folder (needs {BANK_JSON} and {WEIGHTS})")
        info = json.loads((path / BANK_JSON).read_text())
        bank = cls.from_json_and_state(info, load_file(str(path / WEIGHTS)))
        bank.to(device)
        if model is not None:
            bank.check_model(model, allow_mismatch=allow_mismatch)
        return bank


def _check_mergeable(banks: list["DecoderBank"]) -> None:
    """Raise InputValueError unless ``banks`` have disjoint sites, one task, one probed model, one noise flag."""
    seen: dict[str, int] = {}
    for i, b in enumerate(banks):
        for s in b.sites:
            if str(s) in seen:
                raise InputValueError(
                    f"site {str(s)!r} is in bank {seen[str(s)]} and bank {i}; merged sites must be disjoint")
            seen[str(s)] = i
    first = banks[0].meta
    for i, b in enumerate(banks[1:], start=1):
        for key in ("task", "special_ids"):
            if b.meta.get(key) != first.get(key):
                raise InputValueError(
                    f"bank {i} was trained on another task: {key} {b.meta.get(key)!r} vs {first.get(key)!r}")
        f0, fi = first.get("fingerprint", {}), b.meta.get("fingerprint", {})
        if f0.get("architecture") != fi.get("architecture"):
            raise InputValueError(f"bank {i} was trained on a model of another architecture: "
                             f"{fi.get('architecture')} vs {f0.get('architecture')}")
        for key, what in (("weights_sha256", "weights"), ("processing", "weight processing")):
            if f0.get(key) != fi.get(key):
                raise InputValueError(f"bank {i} was trained on another probed model ({what} differ: "
                                 f"{str(fi.get(key))[:40]} vs {str(f0.get(key))[:40]}); merge only banks "
                                 "of one model")
    flags = [b.noise_flag for b in banks]
    if len(set(flags)) > 1:
        def name(i: int) -> str:
            more = ", ..." if len(banks[i].sites) > 2 else ""
            return f"bank {i} ({', '.join(str(s) for s in banks[i].sites[:2])}{more})"

        raise InputValueError(f"{'; '.join(name(i) for i, f in enumerate(flags) if f)} trained with a noise flag "
                         f"(train_noise_flag), {'; '.join(name(i) for i, f in enumerate(flags) if not f)} "
                         "without; a bank conditions all its decoders one way, so merge only banks trained alike")
