"""tl_inversion: InversionView for TransformerLens.

Read what an activation encodes by sampling its preimage with a trained decoder
(Huang et al. 2024, arXiv 2405.17653), then test the reading causally with activation and
path patching. Works on ``HookedTransformer`` (TL 2.x/3.x) and ``TransformerBridge``
(TL 3.x/4.x), by TransformerLens hook name.

Data flows one way, one subpackage per stage: :mod:`.tasks` -> :mod:`.model` (the probed
model, activations) -> :mod:`.decoding` (decoders) -> :mod:`.training` / :mod:`.inversion`
(sampling and verifying preimages) -> :mod:`.evaluation` -> :mod:`.patching` (causal
verification) -> :mod:`.viewer` / :mod:`.cli`.

The names below are imported lazily (PEP 562): ``import tl_inversion`` loads only
:mod:`tl_inversion.errors`; ``tl_inversion.train`` imports the training code (and torch,
TransformerLens) on first use. ``dir()`` and ``__all__`` list every name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tl_inversion import errors as _errors
from tl_inversion.errors import (
    BridgeUnavailableError,
    ConfigError,
    InputTypeError,
    InputValueError,
    LoadError,
    MissingPathError,
    ModelMismatchError,
    NotationError,
    OutputExistsError,
    PositionError,
    SiteError,
    TLInversionError,
    TLInversionWarning,
    TokenIdError,
)

__version__ = "0.1.0"

#: ``{exported name: module that defines it}``, imported on first access.
_LAZY: dict[str, str] = {
    "Decoder": "tl_inversion.decoding.decoder",
    "DecoderBank": "tl_inversion.decoding.bank",
    "DecoderConfig": "tl_inversion.decoding.config",
    "EvalPlan": "tl_inversion.tasks.plan",
    "EvaluateConfig": "tl_inversion.evaluation.config",
    "EvaluationReport": "tl_inversion.evaluation.report",
    "PreimageResult": "tl_inversion.inversion.result",
    "SampleConfig": "tl_inversion.inversion.config",
    "Site": "tl_inversion.model.sites",
    "TrainConfig": "tl_inversion.training.config",
    "evaluate": "tl_inversion.evaluation.evaluate",
    "feature_consistency": "tl_inversion.evaluation.consistency",
    "get_task": "tl_inversion.tasks",
    "harvest": "tl_inversion.model.activations",
    "load_hf_gpt2": "tl_inversion.model.loading",
    "measure_faithfulness": "tl_inversion.inversion.verify",
    "parse_site": "tl_inversion.model.sites",
    "sample_many": "tl_inversion.inversion.sampling",
    "sample_preimage": "tl_inversion.inversion.sampling",
    "task_data": "tl_inversion.tasks",
    "train": "tl_inversion.training.trainer",
    "validate_site": "tl_inversion.model.sites",
    # evaluation and the one-object entry point
    "Inverter": "tl_inversion.evaluation.inverter",
    "FaithfulnessResult": "tl_inversion.inversion.verify",
    # tasks
    "Task": "tl_inversion.tasks.protocol",
    "TextTask": "tl_inversion.tasks.custom",
    "default_plan": "tl_inversion.tasks.plan",
    # causal verification
    "CircuitFaithfulness": "tl_inversion.patching.circuit",
    "PatchingResult": "tl_inversion.patching.results",
    "circuit_faithfulness": "tl_inversion.patching.circuit",
    "cumulative_patching": "tl_inversion.patching.activation",
    "patch_nodes": "tl_inversion.patching.activation",
    "path_patch": "tl_inversion.patching.path",
    "plot_cumulative": "tl_inversion.patching.plots",
    "run_patching": "tl_inversion.patching.activation",
    "run_path_patching": "tl_inversion.patching.path",
    "verify_feature": "tl_inversion.patching.features",
    # the embedded demo and the viewer
    "load_demo": "tl_inversion.demo",
    "serve": "tl_inversion.viewer.server",
    "serve_demo": "tl_inversion.viewer.server",
}

_ERRORS = list(_errors.__all__)  # every error class, exported at the top level

__all__ = sorted([*_LAZY, *_ERRORS])

#: subpackages and modules reachable as attributes (``tl_inversion.tasks``), imported on first access
_SUBMODULES = {"cli", "decoding", "demo", "devices", "errors", "evaluation", "inversion", "io", "model", "patching",
               "tasks", "training", "viewer"}


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first access (PEP 562) and cache the value."""
    if name in _SUBMODULES:
        return importlib.import_module(f"tl_inversion.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tl_inversion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, including the lazily imported ones."""
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from tl_inversion.decoding.bank import DecoderBank
    from tl_inversion.decoding.config import DecoderConfig
    from tl_inversion.decoding.decoder import Decoder
    from tl_inversion.demo import load_demo
    from tl_inversion.evaluation.config import EvaluateConfig
    from tl_inversion.evaluation.consistency import feature_consistency
    from tl_inversion.evaluation.evaluate import evaluate
    from tl_inversion.evaluation.inverter import Inverter
    from tl_inversion.evaluation.report import EvaluationReport
    from tl_inversion.inversion.config import SampleConfig
    from tl_inversion.inversion.result import PreimageResult
    from tl_inversion.inversion.sampling import sample_many, sample_preimage
    from tl_inversion.inversion.verify import FaithfulnessResult, measure_faithfulness
    from tl_inversion.model.activations import harvest
    from tl_inversion.model.loading import load_hf_gpt2
    from tl_inversion.model.sites import Site, parse_site, validate_site
    from tl_inversion.patching.activation import cumulative_patching, patch_nodes, run_patching
    from tl_inversion.patching.circuit import CircuitFaithfulness, circuit_faithfulness
    from tl_inversion.patching.features import verify_feature
    from tl_inversion.patching.path import path_patch, run_path_patching
    from tl_inversion.patching.plots import plot_cumulative
    from tl_inversion.patching.results import PatchingResult
    from tl_inversion.tasks import get_task, task_data
    from tl_inversion.tasks.custom import TextTask
    from tl_inversion.tasks.plan import EvalPlan, default_plan
    from tl_inversion.tasks.protocol import Task
    from tl_inversion.training.config import TrainConfig
    from tl_inversion.training.trainer import train
    from tl_inversion.viewer.server import serve, serve_demo
