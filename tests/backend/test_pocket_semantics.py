"""Semantic checks with the trained pocket model (kept fast: 64 px but for the layout pass, few steps)."""

import numpy as np
import pytest
import torch

from generator_backend import pocket_dataset as ds
from generator_backend.core import GenerationRequest, PromptTerm, generate
from generator_backend.models import POCKET_DIR, ModelManager
from generator_backend.pocket_eval import TextureClassifier

STEPS, GUIDANCE = 15, 5.0


@pytest.fixture(scope="module")
def pocket():
    assert (POCKET_DIR / "model_index.json").exists(), "the pocket model ships in generator_backend/pocket_model"
    return ModelManager(["pocket"], device="cpu").get()


@pytest.fixture(scope="module")
def classifier():
    return TextureClassifier(size=64, per_kind=20)


def run(c, **kw):
    base = dict(seed=1, steps=STEPS, guidance=GUIDANCE, width=64, height=64, scheduler="euler")
    return generate(c, GenerationRequest(**{**base, **kw})).numpy()


def mean_rgb(image):
    return image.reshape(-1, 3).mean(0)


# Seamless on: not met by the shipped weights (6 and 10 of 16, issue 15; benchmarks/RESULTS.md). Strict,
# so the weights that fix it turn these into failures to un-mark.
NOT_YET = pytest.mark.xfail(strict=True, reason="issue 15: the shipped decoder and UNet read colour from the borders")


@pytest.mark.parametrize("tile", ["", pytest.param("xy", marks=NOT_YET), pytest.param("x", marks=NOT_YET)])
def test_colours_follow_the_prompt(pocket, classifier, tile):
    # Seamless tiling on too (the panel's and the demo's setting): wrapped convolutions lose the
    # borders a UNet trained with zero padding only reads colour from (green came back purple).
    hits = sum(classifier.colour(run(pocket, prompt=f"{c} checker", seed=s, tile_axes=tile)) == c
               for c in ds.COLOURS for s in range(2))
    assert hits >= 14  # of 16


def test_ensembling_red_and_blue_gives_a_colour_between(pocket):
    red, blue = mean_rgb(run(pocket, prompt="red stripes")), mean_rgb(run(pocket, prompt="blue stripes"))
    mixed = mean_rgb(run(pocket, prompts=[PromptTerm("red stripes", 0.5), PromptTerm("blue stripes", 0.5)]))
    assert red[0] > mixed[0] > blue[0] and red[2] < mixed[2] < blue[2]


def test_img2img_keeps_the_pattern_at_low_strength_and_follows_the_prompt_at_high(pocket, classifier):
    source = torch.from_numpy(ds.render("green", "checker", 64, seed=5))
    # Dots: a pattern every trained pocket model has drawn reliably (benchmarks/RESULTS.md).
    for seed in range(2):
        low = run(pocket, prompt="red dots", init_image=source, strength=0.1, seed=seed)
        high = run(pocket, prompt="red dots", init_image=source, strength=1.0, seed=seed)
        assert classifier.pattern(low) == "checker" and classifier.colour(low) == "green"
        assert classifier.pattern(high) == "dots" and classifier.colour(high) == "red"


def test_infusion_shifts_colour_toward_the_biasing_image_monotonically(pocket):
    bias = torch.from_numpy(ds.render("blue", "checker", 64, seed=7))
    target = mean_rgb(bias.numpy())
    # On this small model the features of the last, full-resolution up block carry the colour
    # (deeper features pass through GroupNorms that remove uniform shifts).
    distances = []
    for weight in (0.0, 0.25, 0.5, 1.0):
        image = run(pocket, prompt="red checker", infusion_images=[bias], infusion_weights={"up2": weight},
                    infusion_cond_only=True)
        distances.append(np.abs(mean_rgb(image) - target).sum())
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] - distances[-1] > 0.1, distances


def test_inpainting_changes_only_the_mask_and_follows_the_prompt(pocket, classifier):
    source = torch.from_numpy(ds.render("green", "checker", 64, seed=5))
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    # At the add-on's default guidance (7.5): this model's texture prior pulls a hole toward the
    # pattern around it, and at guidance 5 the hole stays green (docs/pocket.md).
    out = run(pocket, prompt="red stripes", init_image=source, mask=mask, guidance=7.5)
    inside = mask.numpy().astype(bool)
    np.testing.assert_array_equal(out[~inside], source.numpy()[~inside])
    assert mean_rgb(out[16:48, 16:48][None])[0] > mean_rgb(source.numpy()[16:48, 16:48][None])[0] + 0.1


def test_walk_between_two_colours_is_smooth(pocket):
    from dream_addon import protocol
    from generator_backend.walks import WalkPlan

    params = protocol.validate_params({"walk": "prompts", "walk_prompts": ["red checker", "blue checker"],
                                       "frames": 6, "width": 64, "height": 64, "steps": STEPS,
                                       "guidance": GUIDANCE, "seed": 1}, protocol.walk_fields())
    plan = WalkPlan(pocket, params)
    request = GenerationRequest(seed=1, steps=STEPS, guidance=GUIDANCE, width=64, height=64, scheduler="euler")
    request.frame_noise, request.frame_embeds = plan.batch(range(6))
    means = [mean_rgb(f) for f in generate(pocket, request).numpy()]
    steps = [np.abs(means[i + 1] - means[i]).sum() for i in range(5)]
    total = np.abs(means[-1] - means[0]).sum()
    assert total > 0.2 and max(steps) < 0.6 * total  # no jump carries most of the change


def test_layout_pass_keeps_the_checker_lattice_at_128_px(pocket):
    """At twice the native size a checker comes out sheared from pure noise; the layout pass (on by
    "auto" here) keeps it square. Tolerance: 3 of 4 (the full evaluation: benchmarks/RESULTS.md)."""
    classifier = TextureClassifier(size=128, per_kind=20)
    hits = sum(classifier.pattern(run(pocket, prompt=f"{colour} checker", width=128, height=128, layout="auto",
                                      guidance=3.0)) == "checker" for colour in ("red", "blue", "white", "black"))
    assert hits >= 3
