"""Prompt ensembling and img2img through the one denoising core (tiny model)."""

import numpy as np
import pytest
import torch

from generator_backend.core import GenerationRequest, PromptTerm, generate
from generator_backend.schedulers import make_scheduler

BASE = dict(negative_prompt="blurry", seed=3, steps=4, guidance=7.0, width=64, height=64, scheduler="euler")
BATCH_ATOL = 1e-5  # a different UNet batch size changes fp32 CPU results by ~1e-6


def run(components, **kw):
    return generate(components, GenerationRequest(**{**BASE, **kw})).numpy()


def ensemble(components, *terms, **kw):
    return run(components, prompts=[PromptTerm(*t) for t in terms], **kw)


def test_one_prompt_ensemble_equals_plain(components):
    np.testing.assert_array_equal(ensemble(components, ("red bricks", 1.0)), run(components, prompt="red bricks"))


def test_weights_one_zero_equal_the_single_prompt(components):
    np.testing.assert_allclose(ensemble(components, ("red bricks", 1.0), ("blue waves", 0.0)),
                               run(components, prompt="red bricks"), atol=BATCH_ATOL)


def test_same_prompt_twice_equals_it_once(components):
    np.testing.assert_allclose(ensemble(components, ("red bricks", 0.5), ("red bricks", 0.5)),
                               run(components, prompt="red bricks"), atol=BATCH_ATOL)


def test_swapping_prompts_with_weights_changes_nothing(components):
    a = ensemble(components, ("red bricks", 0.7), ("blue waves", 0.3))
    b = ensemble(components, ("blue waves", 0.3), ("red bricks", 0.7))
    np.testing.assert_allclose(a, b, atol=BATCH_ATOL)
    assert np.abs(a - run(components, prompt="red bricks")).max() > 1e-3  # the second prompt matters


def test_negative_weight_and_per_prompt_guidance_change_the_result(components):
    base = ensemble(components, ("red bricks", 1.0), ("blue waves", 0.0))
    assert np.abs(ensemble(components, ("red bricks", 1.0), ("blue waves", -0.5)) - base).max() > 1e-3
    assert np.abs(ensemble(components, ("red bricks", 1.0, 3.0), ("blue waves", 0.0)) - base).max() > 1e-3


def test_all_prompts_share_one_unet_call_per_step(components):
    calls = []
    hook = components.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        ensemble(components, ("a", 0.25), ("b", 0.25), ("c", 0.25), ("d", 0.25))
    finally:
        hook.remove()
    assert calls == [5] * 4  # negative + 4 prompts, one call per step


def test_embedding_mode_averages_embeddings(components):
    same = run(components, prompts=[PromptTerm("red bricks", 0.5), PromptTerm("red bricks", 0.5)],
               ensemble_mode="embedding")
    np.testing.assert_allclose(same, run(components, prompt="red bricks"), atol=BATCH_ATOL)
    mixed = run(components, prompts=[PromptTerm("red bricks", 0.5), PromptTerm("blue waves", 0.5)],
                ensemble_mode="embedding")
    assert np.abs(mixed - ensemble(components, ("red bricks", 0.5), ("blue waves", 0.5))).max() > 1e-4


@pytest.fixture(scope="module")
def init_image():
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.random((64, 64, 3), dtype=np.float32))


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m", "euler_a"])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_matches_diffusers(components, tiny_pipe, init_image, scheduler, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**{k: v for k, v in tiny_pipe.components.items()},)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(scheduler, components.scheduler)
    ref = pipe("red bricks", image=init_image.permute(2, 0, 1)[None], strength=strength, negative_prompt="blurry",
               num_inference_steps=10, guidance_scale=7.0, generator=torch.Generator().manual_seed(3),
               output_type="np").images[0]
    ours = run(components, prompt="red bricks", steps=10, scheduler=scheduler, init_image=init_image,
               strength=strength)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_img2img_strength_controls_how_much_changes(components, init_image):
    near = run(components, prompt="red bricks", steps=10, init_image=init_image, strength=0.2)
    far = run(components, prompt="red bricks", steps=10, init_image=init_image, strength=0.9)
    reconstruct = run(components, prompt="red bricks", steps=10, init_image=init_image, strength=0.1)
    source = init_image.numpy()
    assert np.abs(near - source).mean() < np.abs(far - source).mean()
    assert np.abs(reconstruct - near).max() > 1e-4


def test_textual_inversion_tokens_are_expanded(components):
    from dataclasses import replace

    from transformers import CLIPTokenizer

    from generator_backend.core import encode_prompt
    from generator_backend.tiny_model import build_tokenizer_vocab

    vocab, merges = build_tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.add_tokens(["<tex>", "<tex>_1"])  # a two-vector embedding, as load_textual_inversion adds it
    emb = components.text_encoder.get_input_embeddings()
    grown = torch.nn.Embedding(len(tokenizer), emb.weight.shape[1])
    grown.weight.data[:emb.weight.shape[0]] = emb.weight.data
    encoder = type(components.text_encoder)(components.text_encoder.config)
    encoder.load_state_dict(components.text_encoder.state_dict())
    encoder.set_input_embeddings(grown)
    c = replace(components, tokenizer=tokenizer, text_encoder=encoder.eval())
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<tex>", "<tex>_1")]
    expanded = encode_prompt(c, "red <tex>")
    by_hand = encoder(tokenizer("red <tex> <tex>_1", padding="max_length", max_length=77,
                                return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(expanded, by_hand, rtol=0, atol=0)
    assert tokenizer("red <tex> <tex>_1").input_ids[2:4] == ids
