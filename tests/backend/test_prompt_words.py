"""Words a model ignores are named to the user: the rule (prompt_words.py) and the job's
``warning`` events from a real backend serving the pocket model."""

import sys

import pytest

from dream_addon import protocol
from generator_backend.models import POCKET_DIR
from generator_backend.pocket_train import training_words
from generator_backend.prompt_words import ignored_words, read_vocabulary, warnings


@pytest.fixture(scope="module")
def pocket_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(POCKET_DIR / "tokenizer")


def word_level_tokenizer(words, max_length):
    """A tokenizer with an unknown token (the pocket and tiny ones spell any word in byte pieces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_length)


def test_shipped_vocabulary_is_the_training_vocabulary():
    assert read_vocabulary(POCKET_DIR) == frozenset(training_words())
    assert {"seamless", "texture", "green", "checker", "thick"} <= read_vocabulary(POCKET_DIR)


def test_pocket_names_the_words_outside_its_training_vocabulary(pocket_tokenizer):
    vocabulary = read_vocabulary(POCKET_DIR)
    assert ignored_words(pocket_tokenizer, "a photo of a cat", vocabulary) == (["photo", "of", "cat"], [])
    assert ignored_words(pocket_tokenizer, "Seamless thick BLUE bricks texture.", vocabulary) == ([], [])
    # The tokenizer alone would not tell: it spells "cat" in byte pieces, with no unknown token.
    assert ignored_words(pocket_tokenizer, "a photo of a cat") == ([], [])


def test_words_past_the_length_limit_are_reported_as_cut_off(pocket_tokenizer):
    vocabulary = read_vocabulary(POCKET_DIR)
    # 16 tokens, 14 for the text: "tileable" is spelled in 4 pieces and pushes the colour out.
    prompt = "seamless tileable photoreal bricks texture red"
    unknown, cut_off = ignored_words(pocket_tokenizer, prompt, vocabulary)
    ids = pocket_tokenizer(prompt).input_ids
    assert len(ids) > pocket_tokenizer.model_max_length and cut_off == ["red"]
    assert unknown == ["tileable", "photoreal"]


def test_a_tokenizer_with_an_unknown_token_reports_the_words_mapped_to_it():
    tokenizer = word_level_tokenizer(["red", "bricks", "a"], max_length=5)  # no start or end tokens
    assert ignored_words(tokenizer, "a red cat, bricks") == (["cat"], [])  # 5 tokens: all read
    assert ignored_words(tokenizer, "a red bricks red dog bricks bricks") == (["dog"], ["bricks"])
    events = warnings("m", tokenizer, ["a red cat", "", "red dog dog"])
    assert [(e["code"], e["words"]) for e in events] == [("unknown_words", ["cat", "dog"])]
    assert "cat, dog" in events[0]["message"] and "'m'" in events[0]["message"]


@pytest.fixture(scope="module")
def pocket_backend(tmp_path_factory):
    from dream_addon.supervisor import BackendProcess

    process = BackendProcess(sys.executable, 0, models=("pocket",), output_dir=tmp_path_factory.mktemp("out"),
                             device="cpu", max_restarts=0, extra_args=["--preload"])
    process.start()
    assert process.wait_ready(120), "\n".join(process.tail)
    yield process
    process.stop()


def job_events(backend, job_id, params):
    from dream_addon.client import BackendConnection

    conn = BackendConnection("127.0.0.1", backend.ready_info["port"], backend.token, client="pytest")
    conn.send({"type": "submit", "job_id": job_id, "params": params})
    events = []
    while not events or events[-1]["type"] not in protocol.TERMINAL_EVENTS:
        message, _ = conn.recv()
        if message.get("job_id") == job_id:
            events.append(message)
    conn.close()
    return events


SMALL = {"width": 64, "height": 64, "steps": 2, "preview_interval": 0.0, "model": "pocket"}


def test_backend_warns_of_the_words_the_pocket_model_ignores(pocket_backend):
    events = job_events(pocket_backend, "cat", dict(SMALL, prompt="a photo of a cat"))
    warned = [e for e in events if e["type"] == "warning"]
    assert [(e["code"], e["words"], e["model"]) for e in warned] == [("unknown_words", ["photo", "of", "cat"], "pocket")]
    kinds = [e["type"] for e in events]
    assert kinds.index("warning") < kinds.index("result") == len(kinds) - 1  # the job still runs
    # Ensemble prompts and the negative prompt are read too; known words give no warning.
    events = job_events(pocket_backend, "ens", dict(SMALL, prompts=[{"text": "red bricks"}, {"text": "blue moss"}],
                                                    negative_prompt="blurry"))
    assert [e["words"] for e in events if e["type"] == "warning"] == [["moss", "blurry"]]
    events = job_events(pocket_backend, "plain", dict(SMALL, prompt="seamless thick blue bricks texture"))
    assert [e for e in events if e["type"] == "warning"] == [] and events[-1]["type"] == "result"
