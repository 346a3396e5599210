"""How decoders are trained: :class:`TrainConfig`, its checks, and what a resume may change.

Every invalid value raises :class:`~tl_inversion.errors.ConfigError` whose ``field`` is the
config field's name (a command line maps it to its own flag); a value of the wrong type
(a string for a number, an int for a flag) raises
:class:`~tl_inversion.errors.InputTypeError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

from tl_inversion.decoding.config import DecoderConfig
from tl_inversion.errors import ConfigError, InputTypeError, InputValueError
from tl_inversion.io import plain_bool, plain_number
from tl_inversion.model.sites import parse_sites
from tl_inversion.training.noise import NOISE_SHAPES

__all__ = ["TrainConfig", "RESUMABLE_CHANGES", "TOPOLOGIES", "SCHEDULES", "METRICS", "PRESETS", "preset_config",
           "init_accepts_any", "DECODER_SET_BY_TRAINING"]

Topology = Literal["per_hook", "shared"]
Schedule = Literal["constant", "cosine"]
NoiseShape = Literal["gaussian", "ball", "preimage"]
Metric = Literal["l2", "cosine"]

#: Valid values of the choice fields (from their ``Literal`` types).
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
METRICS: tuple[str, ...] = get_args(Metric)
assert get_args(NoiseShape) == tuple(NOISE_SHAPES), "NoiseShape must list training.noise.NOISE_SHAPES"

#: Fields that may change between a run and its resumption (they do not change the result;
#: a resumed run starts from its checkpoint, not from ``init_banks``).
RESUMABLE_CHANGES = ("steps", "time_limit_s", "eval_every", "checkpoint_every", "keep_checkpoints", "device", "compile",
                     "init_banks")

_INTS = ("steps", "batch_size", "warmup_steps", "eval_every", "eval_n", "checkpoint_every", "keep_checkpoints", "seed")
_FLOATS = ("lr", "weight_decay", "grad_clip", "bos_prob", "train_noise", "epsilon", "rebalance_temperature",
           "time_limit_s")
_BOOLS = ("train_noise_flag", "rebalance", "amp", "stack", "compile")
_CHOICES = ("topology", "schedule", "metric", "train_noise_shape")
# DecoderConfig fields that train() fills from the task and the sites; `decoder` may set the others
_DECODER_PROBE = {"vocab_size": 8, "n_ctx": 8, "d_act": 8, "bos_id": 0, "eos_id": 1, "pad_id": 2, "n_sites": 1}
#: DecoderConfig fields ``train()`` sets from the task and the sites (``TrainConfig.decoder`` sets the others).
DECODER_SET_BY_TRAINING = tuple(_DECODER_PROBE)


def init_accepts_any(*names: str) -> Callable[[type], type]:
    """Class decorator (above ``@dataclass``): ``__init__`` takes any value for fields ``names``.

    A config dataclass's field annotations say what each field holds once built (the command
    line reads them for its flags: types, choices, ``--x/--no-x``), but ``__post_init__``
    accepts more for these fields and converts it (a NumPy or torch scalar, an int for a
    float) or refuses it with an error naming the field (a string for a number, an unknown
    choice). This annotates those parameters of the generated ``__init__`` as ``Any``, so a
    runtime type checker (jaxtyping's import hook with beartype) leaves them to
    ``__post_init__``; the fields' own annotations are unchanged.

    Raises:
        InputTypeError: a name that is not a parameter of the class's ``__init__``.
    """

    def decorate(cls: type) -> type:
        annotations = cls.__init__.__annotations__
        unknown = [n for n in names if n not in annotations]
        if unknown:
            raise InputTypeError(f"{cls.__name__}.__init__ has no parameters {unknown}")
        annotations.update(dict.fromkeys(names, Any))
        return cls

    return decorate


@init_accepts_any(*_INTS, *_FLOATS, *_BOOLS, *_CHOICES, "sites", "init_banks")  # __post_init__ converts them
@dataclass
class TrainConfig:
    """How to train decoders (InversionView Sec. 3 and App. C; defaults are the paper's).

    Attributes:
        sites: site strings to train decoders for (see :mod:`tl_inversion.model.sites`);
            stored in canonical spelling, a site given twice is kept once.
        topology: ``"per_hook"`` (one decoder per site, default) or ``"shared"`` (one
            decoder for all sites, told the site by an embedding).
        steps: optimizer steps (>= 1).
        batch_size: inputs per step (each decoder sees all of them in ``per_hook``).
        lr: peak learning rate of AdamW (positive, finite).
        warmup_steps: linear warm-up steps (>= 0).
        schedule: ``"constant"`` after warm-up (the paper) or ``"cosine"`` decay to 10%
            (:func:`~tl_inversion.training.schedule.lr_factor`).
        weight_decay: AdamW weight decay of matrices (paper 0.01).
        grad_clip: gradient-norm clip per decoder (paper 1.0).
        bos_prob: probability in ``[0, 1)`` of replacing the trained position by BOS, the
            "no information" condition (paper 0.01).
        train_noise: in ``[0, 1]``: condition the decoder on ``z + n`` with
            ``n ~ N(0, I) * u * train_noise * ||z|| / sqrt(d)`` (``d`` = the site's width),
            ``u`` uniform in ``[0, 1]`` per input: a noise of norm about ``u * train_noise``
            in units of the distance D. 0 (default) trains on exact activations, as the
            paper did. With noise the decoder learns a smoothed posterior whose
            ``log p(x | z_q)`` falls with D(x, z_q), so near the epsilon boundary members
            outrank non-members (completeness AUROC). See
            :func:`~tl_inversion.training.noise.perturb`.
        train_noise_shape: ``"gaussian"`` (the above, default), ``"ball"`` (uniform in the
            ball of radius ``train_noise * ||z||``) or ``"preimage"`` (the kernel whose
            posterior is uniform over the ``train_noise``-preimage; needs
            ``train_noise < 1``). See :mod:`tl_inversion.training.noise`.
        train_noise_flag: with ``train_noise > 0``: blur only a random half of the rows and
            tell the decoder which (a noise-flag column), so one network learns the exact
            posterior (flag 0: sampling, faithfulness) and the blurred one (flag 1:
            completeness scoring). See :func:`~tl_inversion.training.trainer.condition`.
        eval_every: steps between faithfulness measurements (0: only at the end).
        eval_n: held-out activations per site for the faithfulness rate (paper 200).
        epsilon: membership threshold of the faithfulness rate, unitless (paper 0.1).
        metric: distance D of the faithfulness rate: ``"l2"`` (normalised L2, paper) or
            ``"cosine"``.
        rebalance: ``shared`` topology: draw each input's site with probability
            proportional to ``exp(T (mean_rate - site_rate))`` (else uniformly).
        rebalance_temperature: T of the rebalancing (paper 6).
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: how many checkpoints to keep.
        seed: seed of initialisation, data order and evaluation samples.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` (see
            :func:`tl_inversion.devices.resolve_device`).
        amp: bf16 autocast on CUDA.
        stack: ``per_hook``: train decoders of one shape as one vectorised module
            (:mod:`tl_inversion.decoding.stacking`; same mathematics, far fewer kernel
            launches).
        compile: compile each step's loss (forward and backward) with ``torch.compile``
            (the first steps are slow while it compiles; on CUDA it needs Triton; a backend
            failure stops training with a ConfigError naming this field). Off by default;
            the result is unchanged up to rounding.
        time_limit_s: stop (evaluate, checkpoint, save) once the run has trained this many
            seconds, counted over all calls (a resumed run continues the clock from its
            checkpoint), even before ``steps``; the learning-rate schedule then follows that
            time (so a time-limited run is not bit-reproducible); 0 means no limit.
        decoder: :class:`~tl_inversion.decoding.decoder.DecoderConfig` fields
            (``d_model``, ``n_layers``, ``n_heads``, ``n_cond_blocks``...).
        init_banks: bank folders (merged) whose decoders start this run instead of a random
            initialisation (a warm start): they must cover this run's sites with the same
            decoder shape, noise flag, probed model and task, and not be the run's own
            output bank (``out_dir/bank``). The optimizer, schedule and step count start
            afresh; a run resumed from its own checkpoint does not read them (the bank
            records the ones it started from). Empty or ``None``: random initialisation.

    Raises:
        ConfigError: a value outside its valid range (``field`` names the field).
        InputTypeError: a value of the wrong type (e.g. ``"0.1"`` for ``train_noise``).
    """

    sites: list[str]
    topology: Topology = "per_hook"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: Schedule = "constant"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bos_prob: float = 0.01
    train_noise: float = 0.0
    train_noise_shape: NoiseShape = "gaussian"
    train_noise_flag: bool = False
    eval_every: int = 500
    eval_n: int = 200
    epsilon: float = 0.1
    metric: Metric = "l2"
    rebalance: bool = True
    rebalance_temperature: float = 6.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    stack: bool = True
    compile: bool = False
    time_limit_s: float = 0.0
    decoder: dict[str, Any] = field(default_factory=lambda: {"d_model": 256, "n_layers": 2, "n_heads": 4})
    init_banks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # NumPy / torch scalars become plain numbers (the config is written as JSON and compared on resume)
        for name in _INTS:
            setattr(self, name, plain_number(name, getattr(self, name), int))
        for name in _FLOATS:
            setattr(self, name, plain_number(name, getattr(self, name), float))
        for name in _BOOLS:
            setattr(self, name, plain_bool(name, getattr(self, name)))
        self._check_choices()
        self._check_ranges()
        self._check_noise()
        self._normalise_lists()

    def _check_choices(self) -> None:
        for name, valid in zip(_CHOICES, (TOPOLOGIES, SCHEDULES, METRICS, tuple(NOISE_SHAPES)), strict=True):
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {valid}, got {getattr(self, name)!r}", field=name)

    def _check_ranges(self) -> None:
        for name in ("steps", "batch_size", "eval_n", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 steps (eval_every/checkpoint_every 0: only at the end), "
                                  f"got {getattr(self, name)}", field=name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive, finite learning rate, got {self.lr}", field="lr")
        if not self.time_limit_s >= 0:  # also refuses NaN
            raise ConfigError(f"time_limit_s must be >= 0 seconds (0: no limit), got {self.time_limit_s}",
                              field="time_limit_s")
        if not 0 <= self.bos_prob < 1:
            raise ConfigError(f"bos_prob must be in [0, 1), got {self.bos_prob}", field="bos_prob")
        if not (self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"epsilon must be a finite distance >= 0 (the paper: 0.1), got {self.epsilon}",
                              field="epsilon")

    def _check_noise(self) -> None:
        if not 0 <= self.train_noise <= 1:  # also refuses NaN
            raise ConfigError(f"train_noise must be in [0, 1] (< 1 for train_noise_shape 'preimage'; units of the "
                              f"distance D, whose epsilon is 0.1; 0: none; above 1 the noise outweighs the "
                              f"activation), got {self.train_noise}", field="train_noise")
        if self.train_noise_shape == "preimage" and self.train_noise >= 1:
            raise ConfigError("train_noise_shape 'preimage' needs train_noise < 1 (its radius, in units of D; "
                              f"epsilon is 0.1), got {self.train_noise}", field="train_noise")
        if self.train_noise_flag and self.train_noise == 0:
            raise ConfigError("train_noise_flag needs a train_noise > 0: the flag tells the decoder which rows are "
                              "blurred; with no noise there is nothing to flag", field="train_noise_flag")

    def _normalise_lists(self) -> None:
        if self.init_banks is None:
            self.init_banks = []
        if isinstance(self.init_banks, (str, Path)):
            self.init_banks = [self.init_banks]
        if not all(isinstance(b, (str, Path)) for b in self.init_banks):
            raise InputTypeError(f"init_banks must be a list of bank folders, got {self.init_banks!r}")
        self.init_banks = [str(b) for b in self.init_banks]
        # one spelling per site, each once (like validate_sites), so a resumed run compares equal
        self.sites = list(dict.fromkeys(str(s) for s in parse_sites(self.sites)))
        if not self.sites:
            raise ConfigError("sites is empty: name the sites to train, e.g. ['blocks.0.attn.hook_result[0]'] "
                              "(or start from a preset: preset_config(name, sites))", field="sites")
        self._check_decoder()

    def _check_decoder(self) -> None:
        if not isinstance(self.decoder, dict):
            raise ConfigError(f"decoder must be a dict of decoder sizes, e.g. {{'d_model': 256}}, got {self.decoder!r}",
                              field="decoder")
        valid = [f.name for f in dataclasses.fields(DecoderConfig) if f.name not in DECODER_SET_BY_TRAINING]
        unknown = sorted(set(self.decoder) - set(valid))
        if unknown:
            raise ConfigError(f"decoder has unknown keys {unknown}; valid keys: {valid}", field="decoder")
        try:  # sizes that do not fit (n_heads vs d_model, a negative size) fail now, not in train()
            DecoderConfig(**{**_DECODER_PROBE, **self.decoder})
        except InputValueError as e:
            raise ConfigError(str(e), field="decoder") from None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values (written with checkpoints and banks)."""
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{field: default}`` for every field that has one (JSON-ready)."""
        return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


#: Named TrainConfig values (every field but ``sites``) a command line or notebook can start from.
#: ``cpu``: sized to finish in a few minutes on a 2-core CPU with useful faithfulness on the
#: counting model (the paper's 9 sites): small per-hook decoders trained stacked on a batch of
#: 64 with a cosine schedule, instead of the paper's recipe (about 9 hours on such a CPU).
#: ``project``: this project's GPU recipe (per-hook, stacked, compiled, batch 1,024, lr 2e-3,
#: cosine); ``paper``: the paper's (one shared decoder, batch 256, lr 1e-4 constant, rebalancing).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"topology": "per_hook", "stack": True, "compile": False, "batch_size": 64, "steps": 300,
            "lr": 3e-3, "warmup_steps": 20, "schedule": "cosine", "eval_every": 150, "eval_n": 100,
            "checkpoint_every": 150, "amp": False, "device": "cpu",
            "decoder": {"d_model": 32, "n_layers": 2, "n_heads": 4}},
    "project": {"topology": "per_hook", "stack": True, "compile": True, "batch_size": 1024, "lr": 2e-3,
                "schedule": "cosine", "warmup_steps": 100},
    "paper": {"topology": "shared", "stack": False, "compile": False, "batch_size": 256, "lr": 1e-4,
              "schedule": "constant", "rebalance": True, "warmup_steps": 0},
}


def preset_config(name: str, sites: list[str], **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from preset ``name`` of :data:`PRESETS`, with ``overrides`` on top.

    Args:
        name: a key of :data:`PRESETS` (``"cpu"``, ``"project"``, ``"paper"``).
        sites: the sites to train (e.g. ``paper_counting_sites()`` as strings).
        **overrides: TrainConfig fields that replace the preset's.

    Returns:
        The config (checked as any TrainConfig).

    Raises:
        ConfigError: an unknown preset (``field="preset"``) or an invalid value.
    """
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {name!r}", field="preset")
    values = {**PRESETS[name], **overrides}
    values["decoder"] = dict(values.get("decoder", TrainConfig.defaults()["decoder"]))
    return TrainConfig(sites=sites, **values)
