"""Enhance followed by an upscale (enhance's scale / enlarge_with), and alpha kept by upscale, the detail
pass and enhance: RGBA in, RGBA out; alpha 1 everywhere stays exactly 1 (real worker, pocket models)."""

import numpy as np
import pytest

from dream_addon import protocol
from generator_backend import upscale as up
from generator_backend.upscalers import DEFAULT_UPSCALER, UpscalerManager
from tests.backend.test_tiles import blender_float, colourful, run_job, worker  # noqa: F401  (fixture)

ENHANCE = {"prompt": "blue dots", "width": 64, "height": 64, "region_x": 10, "region_y": 6, "region_width": 30,
           "region_height": 20, "steps": 6, "output_dtype": "float32"}


@pytest.fixture(scope="module")
def served(worker):  # noqa: F811
    worker.upscalers = UpscalerManager(device="cpu")
    return worker


def with_corner(image: np.ndarray) -> np.ndarray:
    """A uint8 RGB image as RGBA, transparent in its top-left 16 x 16 corner, half transparent in a band."""
    alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
    alpha[:16, :16] = 0
    alpha[28:40] = 128
    return np.concatenate([image, alpha], -1)


def test_enhance_then_upscale_is_the_upscale_of_the_enhance_exactly(served):
    image = colourful(64, 64, seed=4)
    enhanced = run_job(served, "enhance", ENHANCE, {"init_image": image})[1]["image"]
    assert enhanced.shape == (64, 64, 4) and (enhanced[..., 3] == 1).all()
    net = served.upscalers.get(DEFAULT_UPSCALER)
    for scale, tile, overlap in ((4, 32, 4), (2, 40, 8)):
        params = {**ENHANCE, "scale": scale, "enlarge_with": DEFAULT_UPSCALER, "enlarge_tile": tile,
                  "enlarge_overlap": overlap}
        message, out, *_ = run_job(served, "enhance", params, {"init_image": image})
        assert (message["width"], message["height"]) == (64 * scale, 64 * scale)
        expected = up.upscale_to(net, enhanced[..., :3], scale, tile, overlap)
        np.testing.assert_array_equal(out["image"][..., :3], expected)
        assert (out["image"][..., 3] == 1).all()  # no alpha in: alpha exactly 1 out
    lanczos = run_job(served, "enhance", {**ENHANCE, "scale": 3}, {"init_image": image})[1]["image"]
    np.testing.assert_array_equal(lanczos[..., :3], up.wrapped_resize(enhanced[..., :3], 3))  # no upscaler: Lanczos


def test_enhance_upscale_fields_are_checked_naming_the_field():
    image = {"init_image": np.zeros((64, 64, 3), np.uint8)}
    for params, field in (({"scale": 9}, "params.scale"), ({"scale": 2, "enlarge_tile": 16}, "params.enlarge_tile"),
                          ({"scale": 2, "enlarge_tile": 32, "enlarge_overlap": 20}, "params.enlarge_overlap")):
        with pytest.raises(protocol.ProtocolError) as error:
            protocol.validate_job("enhance", {**ENHANCE, **params}, image)
        assert error.value.field == field


def test_an_unserved_upscaler_after_enhance_is_refused_at_submit(backend):
    from tests.backend.test_server import connect, events_until_terminal

    conn = connect(backend)
    params = {**ENHANCE, "model": "tiny", "scale": 2, "enlarge_with": "nope"}
    conn.send({"type": "submit", "job_id": "enhance-nope", "kind": "enhance", "params": params},
              {"init_image": np.zeros((64, 64, 3), np.uint8)})
    message = events_until_terminal(conn, "enhance-nope")[-1][0]
    assert (message["type"], message["code"], message["field"]) == ("error", "invalid_param", "params.enlarge_with")
    assert "pocket-x4" in message["allowed"]
    conn.send({"type": "submit", "job_id": "enhance-x8", "kind": "enhance",
               "params": {**params, "enlarge_with": "pocket-x4", "scale": 8}},
              {"init_image": np.zeros((64, 64, 3), np.uint8)})
    message = events_until_terminal(conn, "enhance-x8")[-1][0]
    assert (message["code"], message["field"]) == ("invalid_param", "params.scale")  # more than the net's x4
    conn.close()


@pytest.mark.parametrize("kind", ["enhance", "detail"])
def test_the_upscale_inside_enhance_and_the_detail_pass_reports_tiles_and_stops_between_them(served, kind):
    """Upscale After (enhance) and the detail pass's upscaler run tile by tile with progress (stage "upscale"),
    and Stop there ends the job cancelled after that tile, not after the whole upscale."""
    params = {**ENHANCE, "scale": 4, "enlarge_with": DEFAULT_UPSCALER, "enlarge_tile": 32, "enlarge_overlap": 4}
    if kind == "detail":
        params = {k: v for k, v in params.items() if not k.startswith("region")}
    seen = []

    def stop_at_the_first_tile(job, message):
        if message["type"] == "progress" and message["stage"] == "upscale" and message["step"] >= 1:
            seen.append((message["step"], message["total"]))
            job.cancel_requested.set()

    message, *_ = run_job(served, kind, params, {"init_image": colourful(64, 64, seed=4)},
                          on_event=stop_at_the_first_tile)
    assert message["type"] == "cancelled"
    total = len(up.plan_tiles(64, 64, 32, 4, False, False))
    assert total > 1 and seen == [(1, total)]  # stopped after the first of its tiles


def test_upscale_keeps_alpha_and_alpha_one_stays_exactly_one(served):
    rgba = with_corner(colourful(64, 48, seed=2))
    params = {"width": 64, "height": 48, "tile_size": 32, "tile_overlap": 4, "output_dtype": "float32"}
    params, arrays = protocol.validate_job("upscale", params, {"init_image": rgba})
    from generator_backend.jobs import Job
    from tests.backend.test_tiles import Recorder

    def upscale(array, **extra):
        p, a = protocol.validate_job("upscale", {**params, **extra}, {"init_image": array})
        job = Job(f"alpha-{np.random.default_rng().integers(1 << 60)}", "upscale", p, a)
        recorder = Recorder()
        job.subscribe(recorder)
        served.execute(job)
        return recorder.events[-1][1]["image"]

    out = upscale(rgba)
    assert out.shape == (192, 256, 4)
    alpha = out[..., 3]
    assert (alpha[:52, :52] == 0).all()  # the transparent corner, away from Lanczos's reach (3 px x 4)
    opaque = np.ones(alpha.shape, bool)
    opaque[:76, :76], opaque[100:172] = False, False  # Lanczos's reach around the corner and the band
    assert (alpha[opaque] == 1).all()  # opaque stays exactly opaque
    np.testing.assert_allclose(alpha[124:148], 128 / 255, atol=1e-6)  # the half-transparent band
    np.testing.assert_array_equal(alpha, up.upscale_alpha(rgba[..., 3] / np.float32(255), 4))
    rgb = upscale(rgba[..., :3])
    np.testing.assert_array_equal(out[..., :3], rgb[..., :3])  # alpha changes nothing in the colour
    assert (rgb[..., 3] == 1).all()
    opaque = upscale(np.concatenate([rgba[..., :3], np.full((48, 64, 1), 255, np.uint8)], -1))
    assert (opaque[..., 3] == 1).all()
    # As Blender sends a float image (linear, rows bottom first): alpha is coverage, never colour-managed.
    blender = blender_float(rgba[..., :3])
    blender[..., 3] = (rgba[::-1, :, 3] / np.float32(255))
    flipped = upscale(blender, input_linear=True, input_flip_y=True, linear=True, flip_y=True, factor=2)
    np.testing.assert_array_equal(flipped[..., 3], up.upscale_alpha(blender[..., 3], 2))
    seamless = upscale(rgba, seamless="xy")
    np.testing.assert_array_equal(seamless[..., 3], up.upscale_alpha(rgba[..., 3] / np.float32(255), 4, True, True))


def test_detail_pass_and_enhance_keep_alpha(served):
    rgba = with_corner(colourful(64, 64, seed=6))
    detail = {"prompt": "bricks", "width": 64, "height": 64, "strength": 0.3, "scale": 2, "tile_size": 64,
              "overlap": 16, "steps": 3, "output_dtype": "uint8", "enlarge_with": DEFAULT_UPSCALER}
    out = run_job(served, "detail", detail, {"init_image": rgba})[1]["image"]
    expected = np.round(up.upscale_alpha(rgba[..., 3] / np.float32(255), 2) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 3], expected)
    still = run_job(served, "detail", {**detail, "strength": 0.0, "scale": 1}, {"init_image": rgba})[1]["image"]
    np.testing.assert_array_equal(still, rgba)  # strength 0 at scale 1: the input, alpha included, bit for bit
    enhanced = run_job(served, "enhance", {**ENHANCE, "output_dtype": "uint8"}, {"init_image": rgba})[1]["image"]
    np.testing.assert_array_equal(enhanced[..., 3], rgba[..., 3])  # enhance repaints colour, never coverage
    inside = np.zeros((64, 64), bool)
    inside[6:26, 10:40] = True
    np.testing.assert_array_equal(enhanced[~inside], rgba[~inside])
    bigger = run_job(served, "enhance", {**ENHANCE, "scale": 2}, {"init_image": rgba})[1]["image"]
    np.testing.assert_array_equal(bigger[..., 3], up.upscale_alpha(rgba[..., 3] / np.float32(255), 2))


def test_flat_heap_holds_while_upscaling_and_leaves_a_users_setting_alone(monkeypatch):
    """glibc here: the threshold is set inside (nested uses once) and put back after; with the user's own
    MALLOC_MMAP_THRESHOLD_ nothing is touched (benchmarks/bench_upscale.py measures the memory)."""
    from generator_backend import heap

    calls = []
    monkeypatch.delenv(heap.ENV, raising=False)  # a user's own setting is the case tested last
    real = heap._mallopt()
    assert real is not None  # the Linux CI and this machine run glibc
    monkeypatch.setattr(heap, "_mallopt", lambda: lambda option, value: calls.append((option, value)) or real(
        option, value))
    with heap.flat_heap() as outer:
        with heap.flat_heap() as inner:
            assert outer and inner and calls == [(heap.M_MMAP_THRESHOLD, heap.FLAT)]
    assert calls == [(heap.M_MMAP_THRESHOLD, heap.FLAT), (heap.M_MMAP_THRESHOLD, heap.AFTER)]
    monkeypatch.undo()
    monkeypatch.setenv(heap.ENV, "65536")
    with heap.flat_heap() as applied:
        assert not applied
