"""The shipped CLIP tokenizer (clip_vocab.py): a single-file checkpoint of a shipped architecture gets its
vocabulary offline, equal to OpenAI CLIP's tokenizer."""

import hashlib
import shutil

import pytest

from generator_backend.clip_vocab import BPE_FILE, clip_tokenizer, clip_vocab
from generator_backend.models import POCKET_DIR
from generator_backend.single_file import CONFIGS_DIR, load_tokenizer, tokenizer_folder

# Token ids (without the start and end tokens) from open_clip_torch 3.3.0's SimpleTokenizer, the pure-Python
# reference implementation of CLIP's BPE (with ftfy 6.3.1), run once on these prompts (not in the suite:
# open_clip is not a dependency; scripts/check_clip_tokenizer.py repeats it, and with --random 3000 found
# no prompt that differs). Its one difference, on purpose: it splits a literal "<|endoftext|>" in the
# text into characters, where transformers' tokenizer (what diffusers uses) reads it as the end token.
REFERENCE = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "Red Bricks, seamless tileable texture, 4k, highly detailed":
        [736, 21029, 267, 29373, 26217, 863, 16505, 267, 275, 330, 267, 5302, 12609],
    "A  Photo of a CAT!! naïve café": [320, 1125, 539, 320, 2368, 748, 1097, 35689, 563, 15304],
    "mossy cobblestone (wet:1.2) [dry] {stone|wood}":
        [617, 8661, 47894, 2441, 263, 6682, 281, 272, 269, 273, 264, 314, 4501, 316, 346, 2441, 347, 1704, 348],
    "don't stop; it's 3.14159 o'clock": [847, 713, 1691, 282, 585, 568, 274, 269, 272, 275, 272, 276, 280, 334, 262,
                                          6716],
    "Ünïcödé ÀÉÎ ß Straße": [6522, 77, 35689, 66, 7255, 67, 4166, 36149, 3459, 127, 362, 127, 509, 1894, 127, 253, 324],
    "日本の寺 texture": [39121, 44353, 21575, 161, 107, 374, 16505],
    "rust-red   steel\tplates\n": [14212, 268, 736, 4726, 11485],
    "emoji 🙂🔥 rock": [16327, 32006, 3016, 2172],
    "supercalifragilisticexpialidocious": [1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466],
    "x" * 40: [32035] * 9 + [22819],
    "terracotta roof tiles, overcast light, photogrammetry scan, albedo":
        [45123, 6449, 10607, 267, 36942, 1395, 267, 1153, 2949, 20039, 11261, 267, 526, 571, 818],
}


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_the_shipped_file_is_clip_s_bpe():
    digest = hashlib.sha256(BPE_FILE.read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    vocab, merges = clip_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(49408))  # one id per token


@pytest.mark.parametrize("prompt", sorted(REFERENCE))
def test_it_tokenizes_as_clip_s_reference(tokenizer, prompt):
    assert tokenizer(prompt).input_ids == [49406] + REFERENCE[prompt] + [49407]


def test_padding_truncation_and_round_trips(tokenizer):
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and set(padded[7:]) == {49407}
    assert clip_tokenizer("!")("a cat", padding="max_length", max_length=77).input_ids[4:] == [0] * 73  # "!" is id 0
    long = tokenizer("brick " * 100, truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407
    assert tokenizer.decode(tokenizer("red bricks seamless tileable texture").input_ids, skip_special_tokens=True) \
        == "red bricks seamless tileable texture"
    for text in ("red bricks, seamless tileable texture", "mossy cobblestone (wet:1.2)", "don't stop"):
        ids = tokenizer(text).input_ids  # punctuation is a word of its own: it decodes with spaces around it
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")
        assert tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(ids)) == ids


@pytest.mark.parametrize("architecture,subfolder,pad", [
    ("sd15", "tokenizer", "<|endoftext|>"), ("sd2", "tokenizer", "!"), ("sdxl", "tokenizer", "<|endoftext|>"),
    ("sdxl", "tokenizer_2", "!")])
def test_shipped_architectures_get_the_shipped_vocabulary(tmp_path, architecture, subfolder, pad):
    tok = load_tokenizer(architecture, CONFIGS_DIR / architecture, tmp_path, subfolder)
    assert len(tok) == 49408 and tok.pad_token == pad and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_a_tokenizer_of_the_user_s_own_wins(tmp_path):
    assert tokenizer_folder("sd15", CONFIGS_DIR / "sd15", tmp_path) is None
    shutil.copytree(POCKET_DIR / "tokenizer", tmp_path / "tokenizers" / "sd15")
    assert tokenizer_folder("sd15", CONFIGS_DIR / "sd15", tmp_path) == tmp_path / "tokenizers" / "sd15"
    assert len(load_tokenizer("sd15", CONFIGS_DIR / "sd15", tmp_path)) < 49408  # the pocket model's small one
