"""The latent codec as job kinds over the socket: compress, fetch again, decompress, refusals."""

import numpy as np

from dream_addon import protocol
from dream_addon.latent_format import from_rows, read_header, to_rows
from generator_backend import latent_codec as lc
from generator_backend.pocket_dataset import render
from tests.backend.test_server import connect, events_until_terminal


def submit(conn, job_id, kind, params, arrays=None):
    conn.send({"type": "submit", "job_id": job_id, "kind": kind, "params": params}, arrays)
    return events_until_terminal(conn, job_id)[-1]


def test_compress_then_decompress_over_the_socket_equals_the_codec_in_process(backend, models_dir):
    from generator_backend.models import ModelManager

    image = render("blue", "bricks", 64, seed=4)[:60, :44]  # not a multiple of the VAE's factor
    conn = connect(backend)
    message, arrays = submit(conn, "lat-1", "compress", {"width": 44, "height": 60, "model": "tiny", "bits": 6,
                                                         "palette": 32}, {"init_image": image})
    assert message["type"] == "result", message
    data = from_rows(arrays["latent_file"], message["latent_bytes"])
    components = ModelManager(["tiny"], device="cpu", models_dir=models_dir).get()
    assert data == lc.compress(components, image, lc.CodecSettings(bits=6, palette=32), model="tiny")
    header, _ = read_header(data)
    assert (header["width"], header["height"], header["model"]) == (44, 60, "tiny")
    expected = lc.decompress(components, data)  # the result image is what the file decodes to
    np.testing.assert_array_equal(arrays["image"][..., :3], expected)

    conn.send({"type": "fetch", "job_id": "lat-1"})  # after a reconnect the file comes again
    fetched, again = events_until_terminal(conn, "lat-1")[-1]
    assert fetched["latent_bytes"] == len(data) and from_rows(again["latent_file"], len(data)) == data

    message, arrays = submit(conn, "lat-2", "decompress", {"latent_bytes": len(data)},
                             {"latent_file": to_rows(data)})
    assert message["type"] == "result" and message["model"] == "tiny", message
    np.testing.assert_array_equal(arrays["image"][..., :3], expected)
    steps = submit(conn, "lat-3", "decompress", {"latent_bytes": len(data), "denoise_steps": 2},
                   {"latent_file": to_rows(data)})
    assert steps[0]["type"] == "result" and not np.array_equal(steps[1]["image"][..., :3], expected)
    conn.close()


def test_codec_refusals_name_the_field(backend):
    conn = connect(backend)
    image = np.zeros((16, 16, 3), np.float32)
    refused = submit(conn, "lat-bad-1", "compress", {"width": 16, "height": 16, "palette": 1}, {"init_image": image})[0]
    assert refused["code"] == "invalid_param" and refused["field"] == "params.palette"
    garbage = b"not a latent file at all"
    refused = submit(conn, "lat-bad-2", "decompress", {"latent_bytes": len(garbage)},
                     {"latent_file": to_rows(garbage)})[0]
    assert refused["field"] == "arrays.latent_file" and "not a latent image file" in refused["message"], refused
    refused = submit(conn, "lat-bad-3", "decompress", {"latent_bytes": 5000},
                     {"latent_file": np.zeros((1, 64, 64), np.uint8)})[0]
    assert refused["code"] == "bad_array" and refused["field"] == "arrays.latent_file"
    # A file made with the pocket model (not served by this backend): refused by name, and by family
    # when another VAE is asked for.
    from generator_backend.models import ModelManager

    pocket = ModelManager(["pocket"], device="cpu").get()
    data = lc.compress(pocket, render("red", "dots", 32, seed=1), model="pocket")
    refused = submit(conn, "lat-bad-4", "decompress", {"latent_bytes": len(data)}, {"latent_file": to_rows(data)})[0]
    assert refused["field"] == "params.model" and "'pocket', which is not served here" in refused["message"]
    refused = submit(conn, "lat-bad-5", "decompress", {"latent_bytes": len(data), "model": "tiny"},
                     {"latent_file": to_rows(data)})[0]
    assert refused["code"] == "invalid_param" and "made with model 'pocket'" in refused["message"], refused
    assert refused["field"] == "params.model"
    assert "family" in refused["message"] and "Traceback" not in refused["message"]
    message, _ = submit(conn, "lat-after", "txt2img", {"prompt": "red", "width": 64, "height": 64, "steps": 1})
    assert message["type"] == "result"  # the worker lives on
    conn.close()


def test_codec_kinds_are_registered_once():
    from generator_backend.runner import EXECUTORS

    assert {"compress", "decompress"} <= set(protocol.JOB_KINDS) & set(EXECUTORS)
