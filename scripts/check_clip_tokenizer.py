r"""By-hand check: the shipped CLIP tokenizer (generator_backend/clip_vocab.py) against open_clip's
SimpleTokenizer, the pure-Python reference implementation of CLIP's BPE (how the ids in
tests/backend/test_clip_vocab.py were made). open_clip is no dependency of the project: unpack its
tokenizer.py from the open_clip_torch wheel and install ftfy beside it, e.g.
    pip download --no-deps open_clip_torch==3.3.0 && unzip -j open_clip_torch-*.whl open_clip/tokenizer.py \
        open_clip/bpe_simple_vocab_16e6.txt.gz -d /tmp/oc && pip install --target /tmp/oc ftfy
Usage: PYTHONPATH=.:/tmp/oc .venv/bin/python scripts/check_clip_tokenizer.py /tmp/oc/tokenizer.py \
           [--random N | PROMPT ...]
(--random N: N seeded random prompts of vocabulary words, punctuation, digits, accents, CJK, emoji,
made-up words and upper case; 2026-12-01: 3000 prompts, 0 differ.)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reference(tokenizer_py: str):
    """open_clip's SimpleTokenizer, loaded from its file alone (its package imports torch models)."""
    namespace = {"__file__": tokenizer_py, "__name__": "open_clip_tokenizer"}
    exec(compile(Path(tokenizer_py).read_text(), tokenizer_py, "exec"), namespace)
    return namespace["SimpleTokenizer"]()


def random_prompts(count: int, seed: int = 0) -> list:
    """Seeded prompts that exercise the BPE: words, punctuation, digits, non-ASCII text, case."""
    from generator_backend.clip_vocab import clip_vocab

    rng = random.Random(seed)
    words = [t.removesuffix("</w>") for t in clip_vocab()[0] if t.endswith("</w>") and t.isascii()]
    extra = list(",.;:!?()[]{}'\"-_/\\#@%&*+=<>|~`^$0123456789") + ["é", "ß", "ñ", "日本", "🙂", "\t", "  ", "ø", "Ω"]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
    prompts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            parts.append(rng.choice(words) if r < 0.6 else rng.choice(extra) if r < 0.85 else
                         "".join(rng.choice(letters) for _ in range(rng.randint(1, 14))))
        prompt = (" " if rng.random() < 0.7 else "").join(parts)
        prompts.append(prompt.upper() if rng.random() < 0.3 else prompt)
    return prompts


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    from tests.backend.test_clip_vocab import REFERENCE

    from generator_backend.clip_vocab import clip_tokenizer

    ref, ours = reference(sys.argv[1]), clip_tokenizer()
    prompts = random_prompts(int(sys.argv[3])) if sys.argv[2:3] == ["--random"] else sys.argv[2:] or list(REFERENCE)
    differ = 0
    for prompt in prompts:
        a, b = ref.encode(prompt), ours(prompt, add_special_tokens=False).input_ids
        if a != b:
            differ += 1
            print(f"differs: {prompt!r}\n  reference {a}\n  ours      {b}")
    print(f"{len(prompts)} prompts, {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
