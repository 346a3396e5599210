"""tl_inversion: InversionView for TransformerLens.

Read what an activation encodes by sampling its preimage with a trained decoder
(Huang et al. 2024, arXiv 2405.17653), then test the reading causally with activation and
path patching. Works on ``HookedTransformer`` (TL 2.x/3.x) and ``TransformerBridge``
(TL 3.x/4.x), by TransformerLens hook name.

Data flows one way: task -> probed model (:mod:`.hooked`) -> activations -> decoders
(:mod:`.training`, :mod:`.sampling`) -> probed model again (:mod:`.verify`) -> results
(:mod:`.evaluation`, :mod:`.completeness`, :mod:`.report`, :mod:`.viewer`) -> causal verification (:mod:`.patching`).
"""

from .bank import DecoderBank, ModelMismatchError
from .decoder import Decoder, DecoderConfig
from .evaluation import feature_consistency
from .hooked import harvest
from .loading import load_hf_gpt2
from .report import EvalPlan, EvaluationReport, evaluate
from .sampling import PreimageResult, sample_many, sample_preimage
from .sites import Site, SiteError, parse_site, validate_site
from .tasks import get_task, task_data
from .tasks.base import PositionError
from .training import TrainConfig, measure_faithfulness, train

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
