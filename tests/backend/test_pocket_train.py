"""The pocket model's training: runs, resumes exactly, and exports a loadable SD folder."""

import pytest
import torch

from generator_backend import pocket_train
from generator_backend.pocket_train import Trainer


def weights(trainer, name="unet"):
    return {k: v.clone() for k, v in trainer.c[name].state_dict().items()}


def test_resume_continues_exactly_and_export_loads(tmp_path):
    straight = Trainer(tmp_path / "a", size=32, batch=2)
    straight.train(vae_steps=2, unet_steps=2, decoder_steps=2, checkpoint_every=1, report=lambda _: None)
    first = Trainer(tmp_path / "b", size=32, batch=2)
    first.train(vae_steps=2, unet_steps=2, decoder_steps=1, checkpoint_every=1, report=lambda _: None)
    resumed = Trainer(tmp_path / "b", size=32, batch=2)
    assert resumed.load() and resumed.steps == {"vae": 2, "retile": 0, "distil": 0, "unet": 2, "decoder": 1}
    resumed.train(vae_steps=2, unet_steps=2, decoder_steps=2, checkpoint_every=1, report=lambda _: None)
    for component in ("unet", "vae"):
        for name, value in weights(straight, component).items():
            torch.testing.assert_close(weights(resumed, component)[name], value, rtol=0, atol=0)

    from diffusers import StableDiffusionPipeline

    folder = resumed.export(tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.vae_scale_factor == 4
    vae = pipe.vae
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    dist = vae.encode(x).latent_dist
    # diffusers clamps the log-variance at -30: std exp(-15) = 3e-7, so sample() is the mode within 1e-5
    torch.testing.assert_close(dist.sample(torch.Generator().manual_seed(0)), dist.mode(), rtol=0, atol=1e-5)


def test_sizes_cycle_ema_is_exported_and_init_from_loads_it(tmp_path):
    trainer = Trainer(tmp_path / "run", size=32, batch=4, unet_sizes=(32, 64))
    assert (trainer.batch_size(32), trainer.batch_size(64), trainer.batch_size(128)) == (4, 1, 1)
    trainer.train(vae_steps=1, unet_steps=2, checkpoint_every=10, report=lambda _: None)
    folder = trainer.export(tmp_path / "model")
    # The export holds the moving average, which differs from the raw weights after training.
    restarted = Trainer(tmp_path / "other", size=32, batch=4)
    restarted.init_from(folder)
    assert restarted.c["vae"].config.scaling_factor == trainer.c["vae"].config.scaling_factor != 0.18215
    for name, value in restarted.c["unet"].state_dict().items():
        torch.testing.assert_close(value, trainer.ema["unet"][name], rtol=0, atol=0)
    assert any(not torch.equal(value, trainer.c["unet"].state_dict()[name])
               for name, value in restarted.c["unet"].state_dict().items())


def test_latent_scale_is_calibrated_to_unit_std_and_kept_through_resume_and_export(tmp_path):
    from diffusers import AutoencoderKL

    from generator_backend.pocket_train import latent_std

    trainer = Trainer(tmp_path / "run", size=32, batch=2)
    trainer.train(vae_steps=1, unet_steps=1, checkpoint_every=10, report=lambda _: None)
    scale = trainer.c["vae"].config.scaling_factor
    assert trainer.calibrated and scale != 0.18215
    # Unit std on the calibration images, and within 10 % on textures it has not seen.
    assert abs(latent_std(trainer.c["vae"], trainer.seed, 32) * scale - 1) < 1e-5
    assert abs(latent_std(trainer.c["vae"], trainer.seed + 7, 64, images=64) * scale - 1) < 0.1
    resumed = Trainer(tmp_path / "run", size=32, batch=2)
    assert resumed.load() and resumed.calibrated and resumed.c["vae"].config.scaling_factor == scale
    folder = resumed.export(tmp_path / "model")
    assert AutoencoderKL.from_pretrained(folder / "vae").config.scaling_factor == scale


@pytest.mark.parametrize("stage", ["unet", "decoder"])
def test_learning_rate_is_constant_then_falls_linearly_to_zero(tmp_path, stage):
    trainer = Trainer(tmp_path / "run", size=32, batch=2, lr=1e-3)
    trainer.targets[stage] = 100
    rates = []
    for step in (0, 74, 75, 90, 99, 100):
        trainer.steps[stage] = step
        rates.append(trainer.stage_lr(stage))
    assert rates == [5e-4, 5e-4, 5e-4, 5e-4 * 10 / 25, 5e-4 / 25, 0.0]


def test_decoder_stage_trains_only_the_decoder_at_each_size(tmp_path, monkeypatch):
    """The encoder, and with it the UNet's latent space, must not move; the decoder must."""
    trainer = Trainer(tmp_path / "run", size=32, batch=4, decoder_sizes=(32, 64))
    trainer.train(vae_steps=1, unet_steps=1, checkpoint_every=10, report=lambda _: None)
    vae_before, unet_before = weights(trainer, "vae"), weights(trainer, "unet")
    sizes, real_batch_of = [], pocket_train.batch_of  # a spy: the real batches, with their sizes noted
    monkeypatch.setattr(pocket_train, "batch_of",
                        lambda rng, size, count: sizes.append((size, count)) or real_batch_of(rng, size, count))
    trainer.train(vae_steps=1, unet_steps=1, decoder_steps=2, checkpoint_every=10, report=lambda _: None)
    assert sizes == [(32, 4), (64, 1)]  # the same pixels per step at each size
    changed = {name for name, value in weights(trainer, "vae").items() if not torch.equal(value, vae_before[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed)
    assert all(torch.equal(value, unet_before[name]) for name, value in weights(trainer, "unet").items())


def test_tiling_modes_cycle_once_per_cycle_of_the_sizes(tmp_path):
    trainer = Trainer(tmp_path / "run", size=32, batch=2, unet_sizes=(32, 64), decoder_sizes=(32,),
                      tiling=("", "xy", "x"))
    assert [trainer.axes("unet", step) for step in range(8)] == ["", "", "xy", "xy", "x", "x", "", ""]
    assert [trainer.axes("decoder", step) for step in range(4)] == ["", "xy", "x", ""]
    with pytest.raises(ValueError, match="tiling"):
        Trainer(tmp_path / "bad", tiling=("z",))


def padding_seen(module):
    """Record the zero padding a conv runs with: (0, 0) where modifiers.seamless wraps it instead (torch's
    circular mode for both axes, its own padding hook for one)."""
    seen = []
    module.register_forward_pre_hook(
        lambda m, args: seen.append((0, 0) if m.padding_mode == "circular" else tuple(m.padding)))
    return seen


def test_wrapped_steps_wrap_the_unet_and_decoder_never_the_encoder(tmp_path):
    trainer = Trainer(tmp_path / "run", size=32, batch=2, tiling=("", "xy"))
    unet, vae = trainer.c["unet"], trainer.c["vae"]
    seen = {"unet": padding_seen(unet.conv_in), "decoder": padding_seen(vae.decoder.conv_in),
            "encoder": padding_seen(vae.encoder.conv_in)}
    trainer.train(vae_steps=0, unet_steps=2, decoder_steps=2, checkpoint_every=10, report=lambda _: None)
    assert seen["unet"] == [(1, 1), (0, 0)]  # plain, wrapped
    assert seen["decoder"] == [(1, 1), (0, 0)]
    assert set(seen["encoder"]) == {(1, 1)}
    assert unet.conv_in.padding == (1, 1) and unet.conv_in.padding_mode == "zeros"  # restored
    assert len(unet.conv_in._forward_pre_hooks) == 1  # ours only


def test_tileable_latents_follow_a_shift_of_the_texture(tmp_path):
    from generator_backend import pocket_dataset as ds
    from generator_backend.pocket_train import tileable_latents

    vae = Trainer(tmp_path / "run", size=32, batch=2).c["vae"].eval()
    image = torch.from_numpy(ds.render("green", "bricks", 64, seed=2)).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        latents = tileable_latents(vae, image)
        shifted = tileable_latents(vae, image.roll(8, dims=-1))  # 8 px = 2 latent pixels (f = 4)
    assert latents.shape == (1, 4, 16, 16)
    # Away from the borders the encoder is shift-equivariant; what is left is the far border's reach.
    assert (shifted - latents.roll(2, dims=-1)).abs().max() < 0.05 * latents.std()


def test_resume_with_tiling_is_exact_and_refuses_another_schedule(tmp_path):
    kw = dict(size=32, batch=2, unet_sizes=(32,), decoder_sizes=(32,), tiling=("", "xy", "y"))
    straight = Trainer(tmp_path / "a", **kw)
    straight.train(vae_steps=1, unet_steps=4, decoder_steps=3, checkpoint_every=1, report=lambda _: None)
    first = Trainer(tmp_path / "b", **kw)
    first.train(vae_steps=1, unet_steps=2, decoder_steps=0, checkpoint_every=1, report=lambda _: None)
    resumed = Trainer(tmp_path / "b", **kw)
    assert resumed.load()
    resumed.train(vae_steps=1, unet_steps=4, decoder_steps=3, checkpoint_every=1, report=lambda _: None)
    for component in ("unet", "vae"):
        for name, value in weights(straight, component).items():
            torch.testing.assert_close(weights(resumed, component)[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="tiling"):
        Trainer(tmp_path / "b", **{**kw, "tiling": ("xy",)}).load()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained pocket folder: what a retile run starts from (--init-from)."""
    base = tmp_path_factory.mktemp("base")
    trainer = Trainer(base / "run", size=32, batch=2)
    trainer.train(vae_steps=1, unet_steps=1, checkpoint_every=10, report=lambda _: None)
    return trainer.export(base / "model")


def test_retile_stage_trains_encoder_and_decoder_wrapped_and_leaves_the_unet(tmp_path, exported):
    trainer = Trainer(tmp_path / "run", size=32, batch=2, decoder_sizes=(64,), tiling=("", "xy"), vae_groups=4,
                      keep_scale=True)
    with pytest.raises(ValueError, match="init-from"):
        trainer.train(vae_steps=0, unet_steps=0, retile_steps=1, report=lambda _: None)
    trainer.init_from(exported)
    assert trainer.calibrated  # keep_scale: the loaded UNet's latent scale stays
    vae, unet_before = trainer.c["vae"], weights(trainer, "unet")
    assert vae.encoder.conv_norm_out.num_groups == 4 and trainer.reference.encoder.conv_norm_out.num_groups == 16
    vae_before = weights(trainer, "vae")
    seen = {"encoder": padding_seen(vae.encoder.conv_in), "decoder": padding_seen(vae.decoder.conv_in)}
    trainer.train(vae_steps=0, unet_steps=0, retile_steps=2, checkpoint_every=10, report=lambda _: None)
    # plain, then wrapped; the decoder also decodes a latent crop alone (zero padding) in each step
    assert seen["encoder"] == [(1, 1), (0, 0)]
    assert seen["decoder"] == [(1, 1), (1, 1), (0, 0), (1, 1)]
    changed = {name.split(".")[0] for name, value in weights(trainer, "vae").items()
               if not torch.equal(value, vae_before[name])}
    assert {"encoder", "decoder"} <= changed and "quant_conv" not in changed  # sample() stays the mode
    assert all(torch.equal(value, unet_before[name]) for name, value in weights(trainer, "unet").items())
    assert trainer.c["vae"].config.scaling_factor == pocket_train.loaded_scale(exported)


def test_resume_after_retile_is_exact_and_refuses_other_groups(tmp_path, exported):
    kw = dict(size=32, batch=2, unet_sizes=(32,), decoder_sizes=(32, 64), tiling=("", "xy"), vae_groups=4)
    straight = Trainer(tmp_path / "a", **kw)
    straight.init_from(exported)
    straight.train(vae_steps=0, unet_steps=2, retile_steps=3, checkpoint_every=1, report=lambda _: None)
    first = Trainer(tmp_path / "b", **kw)
    first.init_from(exported)
    first.train(vae_steps=0, unet_steps=0, retile_steps=2, checkpoint_every=1, report=lambda _: None)
    resumed = Trainer(tmp_path / "b", **kw)
    assert resumed.load() and resumed.reference is not None  # the anchor survives the checkpoint
    resumed.train(vae_steps=0, unet_steps=2, retile_steps=3, checkpoint_every=1, report=lambda _: None)
    for component in ("unet", "vae"):
        for name, value in weights(straight, component).items():
            torch.testing.assert_close(weights(resumed, component)[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="vae_groups"):
        Trainer(tmp_path / "b", **{**kw, "vae_groups": 16}).load()


def test_after_retile_wrapped_unet_steps_encode_wrapped(tmp_path, exported):
    trainer = Trainer(tmp_path / "run", size=32, batch=2, unet_sizes=(32,), decoder_sizes=(32,), tiling=("", "xy"),
                      keep_scale=True)  # no calibration pass: only the steps' encodes are seen
    trainer.init_from(exported)
    seen = padding_seen(trainer.c["vae"].encoder.conv_in)
    trainer.train(vae_steps=0, unet_steps=2, retile_steps=2, checkpoint_every=10, report=lambda _: None)
    # retile: plain, wrapped; unet: plain, wrapped (no margin: the encoder has learnt to wrap)
    assert seen == [(1, 1), (0, 0), (1, 1), (0, 0)]


def test_retile_decode_reference_decodes_the_anchor_latents(tmp_path, exported):
    trainer = Trainer(tmp_path / "run", size=32, batch=2, decoder_sizes=(32,), vae_groups=4, keep_scale=True,
                      retile_decode="reference")
    trainer.init_from(exported)
    decoded = []
    trainer.c["vae"].post_quant_conv.register_forward_pre_hook(lambda _m, args: decoded.append(args[0].clone()))
    anchors = []
    reference_encode = trainer.reference.encode
    trainer.reference.encode = lambda x: anchors.append(reference_encode(x).latent_dist.mode()) or reference_encode(x)
    trainer.train(vae_steps=0, unet_steps=0, retile_steps=1, report=lambda _: None)
    torch.testing.assert_close(decoded[0], anchors[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="retile_decode"):
        Trainer(tmp_path / "other", retile_decode="theirs")


def stopped_midway(trainer, folder, stage, steps):
    """Start ``trainer`` from ``folder`` and stop it after two ``stage`` steps, as an interrupted run: the
    learning rate follows the stage's length, so a resume must be of this same run."""
    trainer.init_from(folder)
    step = getattr(trainer, f"{stage}_step")

    def stopped_at_the_third():
        if trainer.steps[stage] == 2:
            raise KeyboardInterrupt
        return step()

    setattr(trainer, f"{stage}_step", stopped_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(vae_steps=0, checkpoint_every=1, report=lambda _: None, **steps)


def test_distil_stage_replaces_the_vae_resumes_exactly_and_exports_a_tiny_vae(tmp_path, exported):
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    kw = dict(size=32, batch=2, unet_sizes=(32,), decoder_sizes=(32, 64), tiling=("", "xy"))
    straight = Trainer(tmp_path / "a", **kw)
    straight.init_from(exported)
    unet_before = weights(straight, "unet")
    straight.train(vae_steps=0, unet_steps=0, distil_steps=3, checkpoint_every=1, report=lambda _: None)
    assert all(torch.equal(value, unet_before[name]) for name, value in weights(straight, "unet").items())
    straight.train(vae_steps=0, unet_steps=2, distil_steps=3, checkpoint_every=1, report=lambda _: None)
    stopped_midway(Trainer(tmp_path / "b", **kw), exported, "distil", dict(unet_steps=2, distil_steps=3))
    resumed = Trainer(tmp_path / "b", **kw)
    assert resumed.load() and resumed.tiny is not None and resumed.steps["distil"] == 2
    resumed.train(vae_steps=0, unet_steps=2, distil_steps=3, checkpoint_every=1, report=lambda _: None)
    for name, value in straight.tiny.state_dict().items():
        torch.testing.assert_close(resumed.tiny.state_dict()[name], value, rtol=0, atol=0)
    for name, value in weights(straight, "unet").items():
        torch.testing.assert_close(weights(resumed, "unet")[name], value, rtol=0, atol=0)

    folder = resumed.export(tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.vae, AutoencoderTiny) and pipe.vae.config.scaling_factor == 1.0
    assert pipe.vae_scale_factor == 4 and not any(isinstance(m, torch.nn.GroupNorm) for m in pipe.vae.modules())
    again = Trainer(tmp_path / "c", **kw)
    again.init_from(folder)  # a distilled model goes on with its tiny VAE
    for name, value in again.tiny.state_dict().items():
        torch.testing.assert_close(value, resumed.tiny.state_dict()[name], rtol=0, atol=0)


def test_decoder_stage_of_a_tiny_vae_trains_its_decoder_alone_with_the_colour_term_and_resumes(tmp_path, exported):
    """After the distil stage the encoder, and with it the UNet's latent space, must not move: only
    the tiny decoder learns, wrapped on a wrapped step, on pixels plus the 8-px mean colour."""
    import torch.nn.functional as F

    from generator_backend.core import vae_latents

    kw = dict(size=32, batch=2, unet_sizes=(32,), decoder_sizes=(32, 64), tiling=("", "xy"))
    distilled = Trainer(tmp_path / "d", **kw)
    distilled.init_from(exported)
    distilled.train(vae_steps=0, unet_steps=0, distil_steps=1, report=lambda _: None)
    folder = distilled.export(tmp_path / "distilled")

    straight = Trainer(tmp_path / "a", **kw)
    straight.init_from(folder)
    tiny_before, unet_before = {k: v.clone() for k, v in straight.tiny.state_dict().items()}, weights(straight)
    state = straight.rng.bit_generator.state
    pixels, _ = pocket_train.batch_of(straight.rng, 32, 2)  # the first step's batch
    straight.rng.bit_generator.state = state
    with torch.no_grad():
        decoded = straight.tiny.decode(vae_latents(straight.tiny, pixels)).sample
    expected = (F.mse_loss(decoded, pixels) + pocket_train.COLOUR_WEIGHT
                * F.mse_loss(F.avg_pool2d(decoded, 8), F.avg_pool2d(pixels, 8))).item()
    seen = padding_seen(straight.tiny.decoder.layers[0])
    losses, step = [], straight.decoder_step
    straight.decoder_step = lambda: losses.append(step()) or losses[-1]
    straight.train(vae_steps=0, unet_steps=0, decoder_steps=4, checkpoint_every=1, report=lambda _: None)
    assert losses[0] == pytest.approx(expected, rel=1e-6)
    changed = {k.split(".")[0] for k, v in straight.tiny.state_dict().items() if not torch.equal(v, tiny_before[k])}
    assert changed == {"decoder"}
    assert all(torch.equal(value, unet_before[name]) for name, value in weights(straight).items())
    assert seen == [(1, 1), (1, 1), (0, 0), (0, 0)]  # sizes 32 and 64 plain, then both wrapped

    stopped_midway(Trainer(tmp_path / "b", **kw), folder, "decoder", dict(unet_steps=0, decoder_steps=4))
    resumed = Trainer(tmp_path / "b", **kw)
    assert resumed.load() and resumed.tiny_decoder_opt is not None and resumed.steps["decoder"] == 2
    resumed.train(vae_steps=0, unet_steps=0, decoder_steps=4, checkpoint_every=1, report=lambda _: None)
    for name, value in straight.tiny.state_dict().items():
        torch.testing.assert_close(resumed.tiny.state_dict()[name], value, rtol=0, atol=0)


def test_tiny_vae_wrapped_decode_is_the_inside_of_a_plain_decode_of_the_repeated_canvas():
    """Without normalisation a pixel depends on nearby latents only: no colour from the border."""
    from generator_backend.modifiers import seamless

    vae = pocket_train.build_tiny_vae(0).eval()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with seamless([vae], "xy"):
            wrapped = vae.decode(latents).sample
        plain = vae.decode(latents.repeat(1, 1, 5, 5)).sample
    torch.testing.assert_close(wrapped, plain[..., 64:96, 64:96], rtol=0, atol=1e-5)
    # a KL VAE's GroupNorm sees the whole canvas: the same comparison fails there
    kl = pocket_train.build_components(0)["vae"].eval()
    with torch.no_grad():
        with seamless([kl], "xy"):
            wrapped = kl.decode(latents).sample
        plain = kl.decode(latents.repeat(1, 1, 5, 5)).sample
    assert (wrapped - plain[..., 64:96, 64:96]).abs().max() > 1e-3


def test_distil_anchor_adds_the_round_trip_and_more_steps_need_the_kl_vae(tmp_path, exported):
    kw = dict(size=32, batch=2, decoder_sizes=(32,), tiling=("", "xy"))
    pure = Trainer(tmp_path / "pure", **kw)
    pure.init_from(exported)
    pure.train(vae_steps=0, unet_steps=0, distil_steps=1, report=lambda _: None)
    folder = pure.export(tmp_path / "distilled")
    with pytest.raises(ValueError, match="distil_anchor"):
        Trainer(tmp_path / "bad", distil_anchor=-1.0)
    again = Trainer(tmp_path / "again", **kw, distil_anchor=0.1)
    again.init_from(folder)
    with pytest.raises(ValueError, match="anchor-to"):  # the loaded tiny VAE has no KL VAE beside it
        again.train(vae_steps=0, unet_steps=0, distil_steps=1, report=lambda _: None)
    again = Trainer(tmp_path / "again", **kw, distil_anchor=0.1)
    again.init_from(folder, anchor=exported)
    decodes = []
    again.tiny.decoder.register_forward_pre_hook(lambda _m, args: decodes.append(args[0].shape))
    before = {k: v.clone() for k, v in again.tiny.state_dict().items()}
    again.train(vae_steps=0, unet_steps=0, distil_steps=1, checkpoint_every=1, report=lambda _: None)
    assert len(decodes) == 2  # the reference latents, then its own round trip
    assert any(not torch.equal(v, before[k]) for k, v in again.tiny.state_dict().items())
    with pytest.raises(ValueError, match="distil_anchor"):
        Trainer(tmp_path / "again", **kw).load()


def test_distil_guards_its_teacher_and_its_scale(tmp_path, exported):
    import json

    # a VAE with fewer GroupNorm groups than the trainer's would load silently and change every latent
    regrouped = Trainer(tmp_path / "four", size=32, batch=2, vae_groups=4).export(tmp_path / "four_model")
    assert json.loads((regrouped / "vae" / "config.json").read_text())["norm_num_groups"] == 4
    with pytest.raises(ValueError, match="vae_groups"):
        Trainer(tmp_path / "sixteen", size=32, batch=2).init_from(regrouped)
    # from scratch: the latent scale is measured before the distil stage, not left at SD's 0.18215
    scratch = Trainer(tmp_path / "scratch", size=32, batch=2, decoder_sizes=(32,))
    lines = []
    scratch.train(vae_steps=1, unet_steps=0, distil_steps=1, report=lines.append)
    assert any('"calibrate"' in line for line in lines) and scratch.c["vae"].config.scaling_factor != 0.18215
    with pytest.raises(ValueError, match="vae-steps 0"):  # the KL VAE is the tiny one's teacher now
        scratch.train(vae_steps=2, unet_steps=0, distil_steps=1, report=lambda _: None)
    # the teacher is --anchor-to's VAE, not --init-from's
    other = Trainer(tmp_path / "other", size=32, batch=2, seed=5)
    other.train(vae_steps=1, unet_steps=0, checkpoint_every=10, report=lambda _: None)
    anchor = other.export(tmp_path / "other_model")
    anchored = Trainer(tmp_path / "anchored", size=32, batch=2)
    anchored.init_from(exported, anchor=anchor)
    for name, value in other.c["vae"].state_dict().items():
        torch.testing.assert_close(anchored.reference.state_dict()[name], value, rtol=0, atol=0)


def test_mean_weight_adds_the_noise_mean_to_the_unet_loss_and_a_resume_keeps_it(tmp_path):
    """Colour is each latent channel's spatial mean; the per-pixel MSE weighs it by 1/(H*W) only."""
    import torch.nn.functional as F

    trainer = Trainer(tmp_path / "run", size=32, batch=2, mean_weight=50.0)
    seen = {}
    add_noise = trainer.c["scheduler"].add_noise
    trainer.c["scheduler"].add_noise = lambda latents, noise, t: seen.update(noise=noise) or add_noise(latents, noise, t)
    trainer.c["unet"].register_forward_hook(lambda _m, _a, out: seen.update(prediction=out.sample.detach()))
    trainer.targets["unet"] = 4
    loss = trainer.unet_step()
    prediction, noise = seen["prediction"], seen["noise"]
    assert loss == pytest.approx((F.mse_loss(prediction, noise)
                                  + 50.0 * F.mse_loss(prediction.mean((2, 3)), noise.mean((2, 3)))).item(), rel=1e-6)
    assert F.mse_loss(prediction.mean((2, 3)), noise.mean((2, 3))) > 0  # the term is there to weigh
    trainer.save()
    with pytest.raises(ValueError, match="mean_weight"):
        Trainer(tmp_path / "run", size=32, batch=2).load()
    with pytest.raises(ValueError, match="mean_weight"):
        Trainer(tmp_path / "bad", mean_weight=-1.0)
