"""The decoder's configuration (shape, vocabulary and special ids, dropout, conditioning).

See :mod:`tl_inversion.decoding.decoder` for what each part does (InversionView, Huang et al.
2024, Sec. 3 / App.).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tl_inversion.errors import InputValueError

__all__ = ["DecoderConfig"]


@dataclass
class DecoderConfig:
    """Shape and hyper-parameters of an InversionView decoder.

    Defaults are the paper's decoder for its small tasks (d 256, 2 layers, 4 heads, 6
    conditioning blocks; InversionView, Huang et al. 2024, Sec. 3 / App.).

    Args:
        vocab_size: number of token ids the decoder reads and writes; ids are
            ``0 .. vocab_size - 1`` and must include ``bos_id``, ``eos_id`` and ``pad_id``.
        n_ctx: maximum sequence length the decoder handles, counting BOS and EOS; the
            number of learned position embeddings and the width of :meth:`Decoder.generate`
            output.
        d_act: activation width the decoder is conditioned on. Activations of narrower
            sites must be zero-padded to ``d_act`` by the caller.
        bos_id: id of the beginning-of-sequence token every sequence starts with.
        eos_id: id of the end-of-sequence token; generation of a row stops after it.
        pad_id: id of the right-padding token; ignored as a training target, never
            sampled, and written after EOS by generation.
        n_sites: number of sites (hook points) one decoder covers; rows and columns of the
            site embedding. A per-hook decoder has 1.
        d_model: width of the decoder's residual stream.
        n_layers: number of transformer blocks.
        n_heads: attention heads per block; must divide ``d_model``.
        d_mlp: hidden width of each block's MLP; ``None`` means ``4 * d_model`` (resolved
            at construction, so :meth:`to_dict` always stores an int).
        n_cond_blocks: residual MLP blocks applied to ``concat(z, site_embedding)`` before
            the per-layer projections (the paper uses 6).
        dropout: dropout probability on embeddings, attention weights and residual
            branches during training, in ``[0, 1)``. Generation never uses dropout.
    """

    vocab_size: int
    n_ctx: int
    d_act: int
    bos_id: int
    eos_id: int
    pad_id: int
    n_sites: int = 1
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int | None = None
    n_cond_blocks: int = 6
    dropout: float = 0.0

    def __post_init__(self) -> None:
        """Resolve ``d_mlp`` and validate every field.

        Raises:
            ValueError: if a size is not a positive int, a special id is out of
                ``[0, vocab_size)``, two special ids coincide, ``n_heads`` does not divide
                ``d_model``, or ``dropout`` is outside ``[0, 1)``.
        """
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        for name, low in (
            ("vocab_size", 1),
            ("n_ctx", 2),
            ("d_act", 1),
            ("n_sites", 1),
            ("d_model", 1),
            ("n_layers", 1),
            ("n_heads", 1),
            ("d_mlp", 1),
            ("n_cond_blocks", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputValueError(
                    f"DecoderConfig.{name} must be an int >= {low}, got {value!r}"
                )
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputValueError(f"DecoderConfig.{name} must be an int, got {value!r}")
            if not 0 <= value < self.vocab_size:
                raise InputValueError(
                    f"DecoderConfig.{name}={value} is outside the vocabulary; valid ids are "
                    f"0..{self.vocab_size - 1} (vocab_size={self.vocab_size})"
                )
        if len({self.bos_id, self.eos_id, self.pad_id}) != 3:
            raise InputValueError(
                "DecoderConfig needs three different special ids, got "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id}; if the "
                "probed vocabulary reuses one token (e.g. GPT-2's <|endoftext|>), append "
                "extra ids to the decoder vocabulary (raise vocab_size)"
            )
        if self.d_model % self.n_heads != 0:
            raise InputValueError(
                f"DecoderConfig.n_heads={self.n_heads} must divide d_model={self.d_model}"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InputValueError(
                f"DecoderConfig.dropout must be a float in [0, 1), got {self.dropout!r}"
            )
        self.dropout = float(self.dropout)

    @property
    def d_cond(self) -> int:
        """Width of the conditioning vector ``a``: ``d_act + n_sites``."""
        return self.d_act + self.n_sites

    @property
    def d_head(self) -> int:
        """Width of one attention head: ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-serialisable dict (``d_mlp`` already resolved).

        Returns:
            A dict with one key per field; ``DecoderConfig.from_dict(cfg.to_dict()) == cfg``.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecoderConfig":
        """Build a config from a dict written by :meth:`to_dict` (e.g. read from JSON).

        Args:
            d: mapping of field name to value.

        Returns:
            The validated config.

        Raises:
            ValueError: if ``d`` has keys that are not fields, misses a required field,
                or a value fails validation.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InputValueError(
                f"DecoderConfig.from_dict got unknown keys {unknown}; valid keys are {names}"
            )
        required = ["vocab_size", "n_ctx", "d_act", "bos_id", "eos_id", "pad_id"]
        missing = [k for k in required if k not in d]
        if missing:
            raise InputValueError(f"DecoderConfig.from_dict is missing required keys {missing}")
        return cls(**d)
