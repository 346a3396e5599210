"""tl_inversion: InversionView for TransformerLens.

Read what an activation encodes by sampling its preimage with a trained decoder
(Huang et al. 2024, arXiv 2405.17653), then test the reading causally with activation and
path patching. Works on ``HookedTransformer`` (TL 2.x/3.x) and ``TransformerBridge``
(TL 3.x/4.x), by TransformerLens hook name.

Data flows one way: task -> probed model (:mod:`.hooked`) -> activations -> decoders
(:mod:`.training`, :mod:`.sampling`) -> probed model again (:mod:`.verify`) -> results
(:mod:`.evaluation`, :mod:`.viewer`) -> causal verification (:mod:`.patching`).
"""

from .bank import DecoderBank, ModelMismatchError
from .decoder import Decoder, DecoderConfig
from .evaluation import feature_consistency
from .hooked import harvest
from .loading import load_hf_gpt2
from .sampling import PreimageResult, sample_many, sample_preimage
from .sites import Site, SiteError, parse_site, validate_site
from .tasks import get_task
from .tasks.base import PositionError
from .training import TrainConfig, measure_faithfulness, train

__version__ = "0.1.0"

__all__ = [
    "Decoder",
    "DecoderBank",
    "DecoderConfig",
    "ModelMismatchError",
    "PositionError",
    "PreimageResult",
    "Site",
    "SiteError",
    "TrainConfig",
    "feature_consistency",
    "get_task",
    "harvest",
    "load_hf_gpt2",
    "measure_faithfulness",
    "parse_site",
    "sample_many",
    "sample_preimage",
    "train",
    "validate_site",
]
