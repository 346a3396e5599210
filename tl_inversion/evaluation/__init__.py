"""How good are the decoders, and what do their samples say: faithfulness, completeness,
feature consistency, and the ``evaluate`` report that runs them from a plan.

Modules: :mod:`.consistency` (feature consistency and its baselines), :mod:`.completeness`
(brute-force true preimages, AUROC, recall), :mod:`.evaluate` (the orchestration),
:mod:`.report` (:class:`EvaluationReport` and its writers), :mod:`.plots` (PNG pictures),
:mod:`.inverter` (:class:`Inverter`: a model and bank checked once, then sampled and
evaluated). The plan of an evaluation is task metadata: :class:`~tl_inversion.tasks.plan.EvalPlan`.

Two exported functions share their module's name, ``evaluate`` and ``completeness``: as
attributes of this package they are the functions. To reach the modules (e.g. to
monkeypatch them), use ``importlib.import_module("tl_inversion.evaluation.evaluate")`` or
``sys.modules``.
"""

from tl_inversion.evaluation.completeness import CompletenessResult, auroc, completeness
from tl_inversion.evaluation.consistency import (
    ConsistencySummary,
    baseline_consistency,
    consistency_summary,
    feature_consistency,
)
from tl_inversion.evaluation.evaluate import evaluate, run_evaluation
from tl_inversion.evaluation.inverter import Inverter
from tl_inversion.evaluation.plots import plot_completeness
from tl_inversion.evaluation.report import COLUMN_LEGEND, CompletenessNotMeasuredWarning, EvaluationReport
from tl_inversion.tasks.plan import RANDOM, EvalPlan, default_plan

__all__ = [
    "COLUMN_LEGEND",
    "RANDOM",
    "CompletenessNotMeasuredWarning",
    "CompletenessResult",
    "ConsistencySummary",
    "EvalPlan",
    "EvaluationReport",
    "Inverter",
    "auroc",
    "baseline_consistency",
    "completeness",
    "consistency_summary",
    "default_plan",
    "evaluate",
    "feature_consistency",
    "plot_completeness",
    "run_evaluation",
]
