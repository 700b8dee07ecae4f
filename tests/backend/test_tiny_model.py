"""The offline tiny model: built from configs, saved and loaded like any diffusers model."""

import json

from generator_backend.tiny_model import BUILD_VERSION, build_tokenizer_vocab, ensure_tiny_model


def test_saved_as_a_diffusers_folder(models_dir):
    folder = models_dir / "tiny"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    assert json.loads((folder / "dream_tiny.json").read_text())["build_version"] == BUILD_VERSION


def test_loads_through_from_pretrained_with_sd_geometry(tiny_pipe):
    assert tiny_pipe.vae_scale_factor == 8
    assert tiny_pipe.unet.config.in_channels == 4
    assert tiny_pipe.text_encoder.config.hidden_size == tiny_pipe.unet.config.cross_attention_dim


def test_tokenizer_has_whole_words_and_byte_fallback(tiny_pipe):
    vocab, _ = build_tokenizer_vocab()
    ids = tiny_pipe.tokenizer("red bricks").input_ids
    assert ids == [vocab["<|startoftext|>"], vocab["red</w>"], vocab["bricks</w>"], vocab["<|endoftext|>"]]
    assert len(tiny_pipe.tokenizer("zqx ünïcode").input_ids) > 4  # unknown words still tokenize


def test_ensure_reuses_a_current_build(models_dir):
    stamp = models_dir / "tiny" / "model_index.json"
    before = stamp.stat().st_mtime_ns
    assert ensure_tiny_model(models_dir) == models_dir / "tiny"
    assert stamp.stat().st_mtime_ns == before
