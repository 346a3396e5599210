"""Causal verification: activation patching and path patching of a hypothesised circuit.

Modules, one job each:

* :mod:`.notation`: circuit notation (nodes, groups, edges, circuits, positions);
* :mod:`.positions`: position resolution on padded rows (negative = from the real end);
* :mod:`.metrics`: what is measured (logit difference, answer log-prob, user metrics);
* :mod:`.sources`: where patched values come from (contrast, cache, mean, zero, resample);
* :mod:`._engine`: batching, source values and hook ops shared by the functions below;
* :mod:`.results`: per-example results, tables, bootstrap CIs;
* :mod:`.activation`: activation patching, alone and cumulative;
* :mod:`.path`: path patching (two-step method, Wang et al. 2022);
* :mod:`.circuit`: circuit faithfulness;
* :mod:`.features`: from an InversionView reading to a patching test;
* :mod:`.plots`: the cumulative waterfall plot.

Contrast pairs come from the tasks (:mod:`tl_inversion.tasks.contrast_set`,
:mod:`tl_inversion.tasks.counting_contrasts`, :mod:`tl_inversion.tasks.addition_contrasts`);
the builders are re-exported here for convenience.
"""

from tl_inversion.patching._warn import (
    AnswerCheckWarning,
    DisconnectedCircuitWarning,
    NoEffectEdgeWarning,
    PatchingWarning,
)
from tl_inversion.patching.activation import cumulative_patching, patch_nodes, run_patching
from tl_inversion.patching.circuit import CircuitFaithfulness, circuit_faithfulness
from tl_inversion.patching.features import feature_pairs, verify_feature
from tl_inversion.patching.metrics import AnswerLogProb, LogitDiff, MetricContext
from tl_inversion.patching.notation import Circuit, Edge, Node, NodeGroup, resolve_position
from tl_inversion.patching.path import path_patch, run_path_patching, split_qkv_inputs
from tl_inversion.patching.plots import plot_cumulative
from tl_inversion.patching.positions import RowEndPositions
from tl_inversion.patching.results import PatchingResult, bootstrap_ci
from tl_inversion.patching.sources import Contrast, FromCache, MeanAblation, Resample, Source, ZeroAblation, as_source
from tl_inversion.tasks.addition_contrasts import addition_contrast_tokens, addition_resample_digits
from tl_inversion.tasks.contrast_set import ContrastDropWarning, ContrastSet
from tl_inversion.tasks.counting_contrasts import counting_flip_contrasts, counting_random_contrasts

__all__ = [
    "AnswerCheckWarning", "AnswerLogProb", "Circuit", "CircuitFaithfulness", "Contrast", "ContrastDropWarning",
    "ContrastSet", "DisconnectedCircuitWarning", "Edge", "FromCache", "LogitDiff", "MeanAblation", "MetricContext",
    "NoEffectEdgeWarning", "Node", "NodeGroup", "PatchingResult", "PatchingWarning", "Resample", "RowEndPositions",
    "Source", "ZeroAblation", "addition_contrast_tokens", "addition_resample_digits", "as_source", "bootstrap_ci",
    "circuit_faithfulness", "counting_flip_contrasts", "counting_random_contrasts", "cumulative_patching",
    "feature_pairs", "patch_nodes", "path_patch", "plot_cumulative", "resolve_position", "run_patching",
    "run_path_patching", "split_qkv_inputs", "verify_feature",
]
