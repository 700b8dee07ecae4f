"""The CLIP tokenizer of SD 1.x, 2.x and SDXL, built offline from the shipped BPE merges.

No single-file checkpoint holds its tokenizer, and nothing can be downloaded here, so the
vocabulary ships in model_configs/clip_bpe (OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz``,
MIT, 1.3 MB). vocab.json and merges.txt are derived from it as CLIP's own SimpleTokenizer
does: the 256 byte symbols, the same with ``</w>``, one token per merge, then the start and
end tokens (ids 49406 and 49407, 49408 in all).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

BPE_FILE = Path(__file__).resolve().parent / "model_configs" / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file (its first line is a header)
START, END = "<|startoftext|>", "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def clip_vocab():
    """(vocab {token: id}, merges [(a, b)]) of CLIP's tokenizer, from the shipped BPE file."""
    from .tiny_model import _bytes_to_unicode

    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")[1:MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = END, model_max_length: int = 77):
    """A transformers CLIPTokenizer with CLIP's vocabulary (SD 2.x and SDXL's second one pad with "!")."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length,
                         bos_token=START, eos_token=END, unk_token=END, pad_token=pad_token)
