"""Words of a prompt that a model ignores, so the user can be told (the job's ``warning`` events).

A word is ignored when
- the model folder ships a ``vocabulary.txt`` (the words it was trained on, one per line; the
  pocket model has one) and the word is not in it: a word the tokenizer can spell out in byte
  pieces, but the model never saw in training, means nothing to it;
- otherwise, when the tokenizer maps part of the word to its unknown token;
- in either case, when the word falls after the tokenizer's length limit (it is cut off).
Words are runs of letters and digits (inner apostrophes kept), compared in lower case;
punctuation is never reported.
"""

from __future__ import annotations

import re
from pathlib import Path

VOCABULARY_FILE = "vocabulary.txt"
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
PIECE = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")  # words and single punctuation marks, as CLIP splits them


def read_vocabulary(folder) -> frozenset | None:
    """The words in ``folder``/vocabulary.txt, or None when the model ships no such list."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    return frozenset(word.lower() for word in path.read_text(encoding="utf-8").split())


def write_vocabulary(folder, words):
    """Write the sorted ``words`` as ``folder``/vocabulary.txt."""
    (Path(folder) / VOCABULARY_FILE).write_text("".join(f"{w}\n" for w in sorted(set(words))), encoding="utf-8")


def _piece_ids(tokenizer, piece):
    return tokenizer(piece, add_special_tokens=False).input_ids


def text_limit(tokenizer) -> int:
    """Tokens of prompt text the model reads: its length limit less the start and end tokens."""
    return tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()


def ignored_words(tokenizer, text: str, vocabulary=None) -> tuple[list, list]:
    """(unknown words, words cut off by the length limit) of ``text``, each in order, without repeats."""
    unknown, cut_off = [], []
    limit = text_limit(tokenizer)
    unk = tokenizer.unk_token_id
    position = 0
    for piece in PIECE.findall(text.lower()):
        ids = _piece_ids(tokenizer, piece)
        position += len(ids)
        if not WORD.fullmatch(piece):
            continue
        if position > limit:
            if piece not in cut_off:
                cut_off.append(piece)
            continue
        known = piece in vocabulary if vocabulary is not None else unk is None or unk not in ids
        if not known and piece not in unknown:
            unknown.append(piece)
    return unknown, cut_off


def warnings(model: str, tokenizer, texts, vocabulary=None) -> list[dict]:
    """The ``warning`` events (without job_id) for the prompts ``texts`` sent to ``model``."""
    unknown, cut_off = [], []
    for text in texts:
        if not text:
            continue
        more_unknown, more_cut = ignored_words(tokenizer, text, vocabulary)
        unknown += [w for w in more_unknown if w not in unknown]
        cut_off += [w for w in more_cut if w not in cut_off]
    events = []
    if unknown:
        events.append({"type": "warning", "code": "unknown_words", "words": unknown, "model": model,
                       "message": f"Model {model!r} does not know, and ignores: {', '.join(unknown)}"})
    if cut_off:
        events.append({"type": "warning", "code": "prompt_too_long", "words": cut_off, "model": model,
                       "message": f"Prompt longer than model {model!r} reads ({text_limit(tokenizer)} tokens); "
                                  f"ignored: {', '.join(cut_off)}"})
    return events
