"""Save as Latent… and Open Latent… in the Image Editor, against the real backend (pocket model)."""

import json
import os
import struct
import time

import bpy
import numpy as np
import pytest

from tests.blender.helpers import image_editor


def texture_image(name="bricks", width=60, height=44):
    """A byte image of coarse blue bricks (a size that is not a multiple of the VAE's factor)."""
    y, x = np.mgrid[0:height, 0:width]
    mortar = ((y % 16) < 2) | (((x + 16 * ((y // 16) % 2)) % 32) < 2)
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = np.where(mortar[..., None], (0.8, 0.8, 0.8), (0.1, 0.2, 0.8))
    image = bpy.data.images.new(name, width, height, alpha=True)
    image.pixels.foreach_set(rgba.reshape(-1))
    return image, rgba


def run(session, operator, **kwargs):
    before = set(session.jobs)
    assert operator(**kwargs) == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.wait_for(job_id, 180)


def header_of(path):
    data = open(path, "rb").read()
    magic, version, length = struct.unpack_from("!4sBI", data)
    assert (magic, version) == (b"DLAT", 1)
    return json.loads(data[9:9 + length]), data


@pytest.fixture
def pocket_scene(scene, session, prefs):
    session.ensure_connected(prefs)
    deadline = time.monotonic() + 60
    while session.welcome is None and time.monotonic() < deadline:  # the model list comes with it
        session.drain(timeout=0.2)
    scene.dream.model = "pocket"
    return scene


def test_save_then_open_a_latent_round_trips_the_image(pocket_scene, session, tmp_path):
    image, rgba = texture_image()
    path = str(tmp_path / "bricks.dlat")
    with image_editor(image):
        job = run(session, bpy.ops.dream.save_latent, filepath=path)
    assert job.state == "done", job.message
    header, data = header_of(path)
    assert (header["width"], header["height"], header["model"]) == (60, 44, "pocket")
    assert len(data) < 60 * 44 * 3  # smaller than the raw pixels
    assert image["dream_latent"] == f"bricks.dlat: {len(data)} bytes"
    assert f"{len(data):,} bytes" in job.message
    names = set(bpy.data.images.keys())
    with image_editor(image):
        job = run(session, bpy.ops.dream.open_latent, filepath=path)
    assert job.state == "done", job.message
    (new,) = set(bpy.data.images.keys()) - names
    opened = bpy.data.images[new]
    assert tuple(opened.size) == (60, 44) and opened.packed_file is not None
    pixels = np.empty(60 * 44 * 4, np.float32)
    opened.pixels.foreach_get(pixels)
    pixels = pixels.reshape(44, 60, 4)
    # The codec's quality is measured in benchmarks/ (bench_latent_codec.py); here: the same picture,
    # the right way up, in the right colours (the pocket VAE does not know grey mortar exactly).
    error, flipped = (np.abs(p[..., :3] - rgba[..., :3]).mean() for p in (pixels, pixels[::-1]))
    assert error < 0.9 * flipped
    assert np.abs(pixels[..., :3].mean((0, 1)) - rgba[..., :3].mean((0, 1))).max() < 0.12
    assert pixels[..., 2].mean() > pixels[..., 0].mean() + 0.2  # and the bricks stay blue


def test_every_codec_setting_changes_the_result(pocket_scene, session, tmp_path):
    image, _ = texture_image("settings")
    latent = pocket_scene.dream_latent
    files = {}
    for name, value in (("default", None), ("bits", 4), ("palette", 16), ("dither", False)):
        latent.bits, latent.palette, latent.dither = 8, 256, True
        if value is not None:
            setattr(latent, name, value)
        path = str(tmp_path / f"{name}.dlat")
        with image_editor(image):
            assert run(session, bpy.ops.dream.save_latent, filepath=path).state == "done"
        files[name] = open(path, "rb").read()
    assert len(set(files.values())) == 4
    latent.bits, latent.palette, latent.dither = 4, 16, True  # a coarse file: denoising has work to do
    with image_editor(image):
        run(session, bpy.ops.dream.save_latent, filepath=str(tmp_path / "coarse.dlat"))
    decoded = []
    for steps in (0, 2):
        latent.denoise_steps = steps
        with image_editor(image):
            job = run(session, bpy.ops.dream.open_latent, filepath=str(tmp_path / "coarse.dlat"))
        assert job.state == "done", job.message
        out = np.empty(60 * 44 * 4, np.float32)
        job.datablock("image").pixels.foreach_get(out)
        decoded.append(out)
    assert not np.array_equal(*decoded)


def test_a_file_that_is_not_a_latent_is_refused_before_anything_is_made(pocket_scene, session, tmp_path):
    image, _ = texture_image("plain")
    bogus = tmp_path / "picture.dlat"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    names, jobs = set(bpy.data.images.keys()), set(session.jobs)
    with image_editor(image), pytest.raises(RuntimeError, match="not a latent image file"):
        bpy.ops.dream.open_latent(filepath=str(bogus))
    with image_editor(image), pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.dream.save_latent(filepath=str(tmp_path / "no" / "such" / "folder" / "x.dlat"))
    assert set(bpy.data.images.keys()) == names and set(session.jobs) == jobs


@pytest.mark.parametrize("size", [(4, 4), (1, 1)])
def test_an_image_under_the_codecs_size_is_refused_before_it_is_sent(pocket_scene, session, tmp_path, size):
    image = bpy.data.images.new("tiny", *size)
    jobs = set(session.jobs)
    with image_editor(image), pytest.raises(RuntimeError, match="params.width must be between 8"):
        bpy.ops.dream.save_latent(filepath=str(tmp_path / "tiny.dlat"))
    assert set(session.jobs) == jobs and not os.path.exists(tmp_path / "tiny.dlat")


def test_a_latent_of_another_model_family_is_refused_by_the_backend(pocket_scene, session, tmp_path):
    image, _ = texture_image("family")
    path = str(tmp_path / "pocket.dlat")
    with image_editor(image):
        assert run(session, bpy.ops.dream.save_latent, filepath=path).state == "done"
    pocket_scene.dream.model = "tiny"  # another VAE
    names = set(bpy.data.images.keys())
    with image_editor(image):
        job = run(session, bpy.ops.dream.open_latent, filepath=path)
    assert job.state == "error" and "made with model 'pocket'" in job.message
    assert set(bpy.data.images.keys()) == names  # the image made for it is gone again
    assert os.path.getsize(path) > 0
