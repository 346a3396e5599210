"""Building a ``TransformerBridge`` around an in-memory Hugging Face module, offline.

``TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...)`` (TL 3.9 and 4.x)
wraps the given module as is; ``name`` is only a label. The tokenizer must be passed and
must say ``add_bos_token=True`` in its init kwargs, or TL re-loads it by name (a hub call).
"""

from __future__ import annotations

from typing import Any

import torch

from tl_inversion.errors import BridgeUnavailableError


def build_bridge(hf_model: Any, tokenizer: Any, *, label: str = "tl-inversion-local-gpt2") -> Any:
    """Wrap ``hf_model`` (a ``GPT2LMHeadModel``) in a ``TransformerBridge`` without any download."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as e:
        raise BridgeUnavailableError(
            "TransformerBridge needs transformer-lens >= 3; this environment has an older one: use model_class='hooked'"
        ) from e
    return TransformerBridge.boot_transformers(
        label, hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
