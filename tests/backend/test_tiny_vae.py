"""A model whose VAE is diffusers' AutoencoderTiny (no latent distribution, no normalisation), as a
distilled pocket model's is (pocket_train's distil stage): the stock pipelines stay the oracle."""

import numpy as np
import pytest
import torch

from generator_backend.core import Components, GenerationRequest, generate, vae_latents
from generator_backend.memory import MemoryOptions, configure
from tests.backend.conftest import load_pipe

BASE = dict(prompt="red bricks", negative_prompt="blurry", seed=3, steps=4, guidance=7.0, scheduler="euler")


def tiny_vae():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)  # f=8 and 4 latent channels, as the tiny model's AutoencoderKL
    return AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                           num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=4).eval()


@pytest.fixture()
def pipe(models_dir):
    pipe = load_pipe(models_dir, "tiny")
    pipe.vae = tiny_vae()
    pipe.register_modules(vae=pipe.vae)
    return pipe


def components(pipe):
    return Components.from_pipeline(pipe, "cpu", torch.float32)


def test_txt2img_and_img2img_match_the_stock_pipelines(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    c = components(pipe)
    assert c.vae_scale_factor == 8
    ours = generate(c, GenerationRequest(**BASE, width=64, height=96)).numpy()
    ref = pipe("red bricks", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.0, width=64,
               height=96, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    np.testing.assert_array_equal(ours, ref)

    init = torch.from_numpy(np.random.default_rng(0).random((64, 64, 3), dtype=np.float32))
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    ref = img2img("red bricks", image=init.permute(2, 0, 1)[None], strength=0.6, negative_prompt="blurry",
                  num_inference_steps=10, guidance_scale=7.0, generator=torch.Generator().manual_seed(3),
                  output_type="np").images[0]
    ours = generate(c, GenerationRequest(**{**BASE, "steps": 10}, width=64, height=64, init_image=init,
                                         strength=0.6)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_vae_latents_reads_either_kind_of_encoder_output(pipe, models_dir):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(vae_latents(pipe.vae, x), pipe.vae.encode(x).latents, rtol=0, atol=0)
    kl = load_pipe(models_dir, "tiny").vae
    dist = kl.encode(x).latent_dist
    torch.testing.assert_close(vae_latents(kl, x), dist.mode(), rtol=0, atol=0)
    generator = torch.Generator().manual_seed(1)
    torch.testing.assert_close(vae_latents(kl, x, generator), dist.sample(torch.Generator().manual_seed(1)),
                               rtol=0, atol=0)


def test_vae_tiling_keeps_the_image_size_with_a_tiny_vae(pipe):
    """AutoencoderTiny takes its tiles' scale as 2**out_channels (8); configure sets the VAE's own."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)  # f=4: three levels
    pipe.vae = AutoencoderTiny(encoder_block_out_channels=(8,) * 3, decoder_block_out_channels=(8,) * 3,
                               num_encoder_blocks=(1,) * 3, num_decoder_blocks=(1,) * 3, latent_channels=4).eval()
    pipe.register_modules(vae=pipe.vae)
    c = configure(components(pipe), MemoryOptions(vae_tiling=True, vae_tile=64))
    assert c.vae_scale_factor == 4 and c.vae.use_tiling
    latents = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        tiled = c.vae.decode(latents).sample
        c.vae.use_tiling = False
        whole = c.vae.decode(latents).sample
    assert tiled.shape == whole.shape == (1, 3, 160, 160)
    # no normalisation: a tile's pixels depend on nearby latents only, so tiles blend to near the whole
    assert (tiled - whole).abs().mean() < 0.05


def test_latent_file_fingerprint_is_unchanged_for_a_kl_vae_and_follows_a_tiny_vae(models_dir, pipe):
    """Old latent files must still load: for an AutoencoderKL the fingerprint is the one it always was
    (the encoder's conv_out, the decoder's conv_in, post_quant_conv)."""
    import hashlib

    from generator_backend.latent_codec import vae_digest

    kl = load_pipe(models_dir, "tiny").vae
    h = hashlib.sha256()
    for module in (kl.encoder.conv_out, kl.decoder.conv_in, kl.post_quant_conv):
        h.update(module.weight.detach().to("cpu", torch.float16).numpy().tobytes())
    assert vae_digest(kl) == h.hexdigest()[:16]
    before = vae_digest(pipe.vae)
    with torch.no_grad():
        pipe.vae.decoder.layers[0].weight.add_(0.01)
    assert vae_digest(pipe.vae) != before


def test_a_pocket_model_with_a_tiny_vae_loads_without_warnings(tmp_path):
    """A user sees the backend's log: diffusers' type note about AutoencoderTiny and its
    re-registered config key are noise there (the pipelines run the tiny VAE as any VAE)."""
    import logging

    from generator_backend.models import POCKET_DIR, ModelManager
    from generator_backend.pocket_train import Trainer

    trainer = Trainer(tmp_path / "run", size=32, batch=2)
    trainer.init_from(POCKET_DIR)
    trainer.train(vae_steps=0, unet_steps=0, distil_steps=1, report=lambda _: None)
    folder = trainer.export(tmp_path / "distilled")  # what the distil stage exports
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("diffusers.pipelines.pipeline_utils",
                                                    "diffusers.configuration_utils")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        c = ModelManager([f"pocket={folder}"], device="cpu").get()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert type(c.vae).__name__ == "AutoencoderTiny" and c.vae_scale_factor == 4
    assert [r.getMessage() for r in records] == []
