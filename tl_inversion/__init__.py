"""tl_inversion: InversionView for TransformerLens.

Read what an activation encodes by sampling its preimage with a trained decoder
(Huang et al. 2024, arXiv 2405.17653), then test the reading causally with activation and
path patching. Works on ``HookedTransformer`` (TL 2.x/3.x) and ``TransformerBridge``
(TL 3.x/4.x), by TransformerLens hook name.

Data flows one way: task -> probed model (:mod:`.hooked`) -> activations -> decoders
(:mod:`.training`, :mod:`.sampling`) -> probed model again (:mod:`.verify`) -> results
(:mod:`.evaluation`, :mod:`.completeness`, :mod:`.report`, :mod:`.viewer`) -> causal verification (:mod:`.patching`).
"""

from tl_inversion.decoding.bank import DecoderBank, ModelMismatchError
from tl_inversion.decoding.decoder import Decoder, DecoderConfig
from tl_inversion.evaluation.consistency import feature_consistency
from tl_inversion.model.activations import harvest
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.evaluation.report import EvalPlan, EvaluationReport, evaluate
from tl_inversion.inversion.sampling import PreimageResult, sample_many, sample_preimage
from tl_inversion.model.sites import Site, SiteError, parse_site, validate_site
from tl_inversion.tasks import get_task, task_data
from tl_inversion.tasks.base import PositionError
from tl_inversion.training.trainer import TrainConfig, measure_faithfulness, train

__version__ = "0.1.0"

__all__ = [
    "Decoder",
    "DecoderBank",
    "DecoderConfig",
    "EvalPlan",
    "EvaluationReport",
    "ModelMismatchError",
    "PositionError",
    "PreimageResult",
    "Site",
    "SiteError",
    "TrainConfig",
    "evaluate",
    "feature_consistency",
    "get_task",
    "harvest",
    "load_hf_gpt2",
    "measure_faithfulness",
    "parse_site",
    "sample_many",
    "sample_preimage",
    "task_data",
    "train",
    "validate_site",
]
