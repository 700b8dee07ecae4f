"""Textual-inversion embeddings: every file format, a weights-only load, and diffusers'
load_textual_inversion on the stock pipelines as the oracle (SD and SDXL)."""

import os

import numpy as np
import pytest
import torch

from generator_backend.core import GenerationRequest, PromptTerm, generate
from generator_backend.embeddings import EmbeddingError, EmbeddingLibrary, read_embedding, words
from tests.backend.conftest import as_components, load_pipe
from tests.backend.test_sdxl import load_xl

WIDTH = 32  # the tiny models' text-encoder width


def vectors(seed, count=2, width=WIDTH):
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(data, str(path))
    else:
        torch.save(data, str(path))
    return path


FORMATS = {
    "a1111.pt": lambda v: {"string_to_param": {"*": v}, "name": "ignored", "step": 100},
    "a1111.safetensors": lambda v: {"emb_params": v},
    "diffusers.bin": lambda v: {"<concept>": v},
    "diffusers.safetensors": lambda v: {"<concept>": v},
}


def image(c, prompt="red shiny bricks", negative="shiny blur", **kw):
    req = dict(prompt=prompt, negative_prompt=negative, seed=3, steps=4, guidance=7.0, width=64, height=64,
               scheduler="euler")
    return generate(c, GenerationRequest(**{**req, **kw})).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_vectors(tmp_path, fmt):
    v = vectors(1)
    path = save(tmp_path / f"shiny.{fmt.split('.')[1]}", FORMATS[fmt](v))
    word, read = read_embedding(path)
    assert word == "shiny" and torch.equal(read[""], v)


def test_a_one_vector_diffusers_file_reads_as_one_row(tmp_path):
    path = save(tmp_path / "Shiny.bin", {"<cat-toy>": vectors(1, 1)[0]})
    word, read = read_embedding(path)
    assert word == "shiny" and read[""].shape == (1, WIDTH)


class Payload:
    """A pickle that runs code when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_pickles_are_read_weights_only(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"evil{suffix}"
    torch.save({"string_to_param": {"*": Payload(str(marker))}}, str(path))
    with pytest.raises(EmbeddingError, match="could not be read"):
        read_embedding(path)
    assert not marker.exists()


@pytest.mark.parametrize("data, message", [
    ({"a": torch.zeros(2, 32), "b": torch.zeros(2, 32)}, "not an embedding"),
    ({"clip_l": torch.zeros(1, 32)}, "both clip_l and clip_g"),
    ({"emb_params": torch.zeros(2, 3, 32)}, "float tensor"),
    ({"emb_params": torch.full((1, 32), float("nan"))}, "finite"),
])
def test_bad_files_are_refused_naming_the_problem(tmp_path, data, message):
    with pytest.raises(EmbeddingError, match=message):
        read_embedding(save(tmp_path / "bad.safetensors", data))


def test_bad_file_names_are_refused(tmp_path):
    with pytest.raises(EmbeddingError, match="file name is the prompt word"):
        read_embedding(save(tmp_path / "two words.pt", {"emb_params": vectors(1)}))


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_diffusers_load_textual_inversion(models_dir, tmp_path, fmt):
    """Exact, with the word in the prompt and in the negative prompt."""
    path = save(tmp_path / "embeddings" / f"shiny.{fmt.split('.')[1]}", FORMATS[fmt](vectors(1)))
    ref_pipe = load_pipe(models_dir, "tiny")
    ref_pipe.load_textual_inversion(str(path), token="shiny")
    c = as_components(load_pipe(models_dir, "tiny"))
    from generator_backend.schedulers import make_scheduler

    ref_pipe.scheduler = make_scheduler("euler", c.scheduler)
    ref = ref_pipe("red shiny bricks", negative_prompt="shiny blur", num_inference_steps=4, guidance_scale=7.0,
                   width=64, height=64, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert EmbeddingLibrary(tmp_path / "embeddings").apply(c) == []
    assert words(c) == {"shiny"}
    np.testing.assert_array_equal(image(c), ref)


def test_the_word_changes_only_prompts_it_appears_in(models_dir, tmp_path):
    c = as_components(load_pipe(models_dir, "tiny"))
    plain_before = image(c, "red bricks", "blur")
    shiny_unknown = image(c)
    library = EmbeddingLibrary(tmp_path)
    save(tmp_path / "shiny.pt", FORMATS["a1111.pt"](vectors(1)))
    library.apply(c)
    np.testing.assert_array_equal(image(c, "red bricks", "blur"), plain_before)  # bit-identical elsewhere
    first = image(c)
    assert np.abs(first - shiny_unknown).max() > 1e-3
    os.utime(save(tmp_path / "shiny.pt", FORMATS["a1111.pt"](vectors(2))), ns=(1, 1))  # re-taught: new vectors
    library.apply(c)
    second = image(c)
    assert np.abs(second - first).max() > 1e-3
    np.testing.assert_array_equal(image(c, "red bricks", "blur"), plain_before)
    # every prompt field: an ensemble's prompts and the negative prompt read the word too
    ensemble = image(c, "", prompts=[PromptTerm("red shiny bricks", 0.5), PromptTerm("blue waves", 0.5)])
    without = image(c, "", prompts=[PromptTerm("red bricks", 0.5), PromptTerm("blue waves", 0.5)])
    assert np.abs(ensemble - without).max() > 1e-3
    assert np.abs(image(c, "red bricks", "shiny") - image(c, "red bricks", "dull")).max() > 1e-3


def test_sdxl_embeddings_fill_both_text_encoders_like_diffusers(models_dir, tmp_path):
    from safetensors.torch import load_file

    from generator_backend.schedulers import make_scheduler

    path = save(tmp_path / "shiny.safetensors", {"clip_l": vectors(1), "clip_g": vectors(2)})
    ref_pipe, _ = load_xl(models_dir, "tiny-xl")
    state = load_file(str(path))
    ref_pipe.load_textual_inversion(state["clip_l"], token="shiny", text_encoder=ref_pipe.text_encoder,
                                    tokenizer=ref_pipe.tokenizer)
    ref_pipe.load_textual_inversion(state["clip_g"], token="shiny", text_encoder=ref_pipe.text_encoder_2,
                                    tokenizer=ref_pipe.tokenizer_2)
    _, c = load_xl(models_dir, "tiny-xl")
    ref_pipe.scheduler = make_scheduler("euler", c.scheduler)
    ref = ref_pipe("red shiny bricks", negative_prompt="shiny blur", num_inference_steps=4, guidance_scale=7.0,
                   width=64, height=64, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert EmbeddingLibrary(tmp_path).apply(c) == []
    assert "shiny" in c.tokenizer_2.added_tokens_encoder
    np.testing.assert_array_equal(image(c), ref)


def test_an_embedding_for_the_other_family_is_skipped_with_a_message(models_dir, tmp_path):
    _, xl = load_xl(models_dir, "tiny-xl")
    sd = as_components(load_pipe(models_dir, "tiny"))
    save(tmp_path / "flat.pt", FORMATS["a1111.pt"](vectors(1)))
    save(tmp_path / "deep.safetensors", {"clip_l": vectors(1), "clip_g": vectors(2)})
    library = EmbeddingLibrary(tmp_path)
    before = image(xl, "red bricks", "blur")
    xl_problems = library.apply(xl)
    assert len(xl_problems) == 1 and "flat.pt" in xl_problems[0] and "does not fit an SDXL model" in xl_problems[0]
    assert words(xl) == {"deep"}
    np.testing.assert_array_equal(image(xl, "red bricks", "blur"), before)
    sd_problems = library.apply(sd)
    assert len(sd_problems) == 1 and "deep.safetensors" in sd_problems[0] and words(sd) == {"flat"}
    assert library.apply(sd) == []  # told once, not on every job


def test_a_word_the_tokenizer_knows_is_refused(models_dir, tmp_path):
    from generator_backend.embeddings import add_word

    c = as_components(load_pipe(models_dir, "tiny"))
    assert "brick" in c.tokenizer.get_vocab()  # a piece of "bricks"
    with pytest.raises(EmbeddingError, match="already a word"):
        add_word(c, "brick", {"": vectors(1)})
