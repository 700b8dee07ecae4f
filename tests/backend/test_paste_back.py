"""Inpainting pastes the input back in its own encoding: outside the mask the output's pixels are
the input's, bit for bit, whatever the input and output encodings."""

import itertools

import numpy as np
import pytest
import torch

from generator_backend.encoding import Encoding, image_tensor, pasted_back, recoded, to_rgba
from tests.backend.test_server import SMALL, connect, events_until_terminal

ENCODINGS = [Encoding(linear, flip, dtype) for linear, flip, dtype in
             itertools.product((False, True), (False, True), ("uint8", "float16", "float32"))]


def input_array(encoding: Encoding, seed=0):
    """An (H, W, 4) input image as Blender would send it in ``encoding``."""
    srgb = torch.from_numpy(np.random.default_rng(seed).random((16, 16, 3), dtype=np.float32))
    return to_rgba(srgb, encoding.dtype, encoding.flip_y, encoding.linear and encoding.dtype != "uint8")


def effective(encoding: Encoding) -> Encoding:
    """Input uint8 arrays are sRGB whatever ``input_linear`` says."""
    return Encoding(encoding.linear and encoding.dtype != "uint8", encoding.flip_y, encoding.dtype)


@pytest.mark.parametrize("source", ENCODINGS, ids=str)
def test_recoding_is_exact_within_an_encoding_and_once_across_encodings(source):
    original = input_array(source)
    np.testing.assert_array_equal(recoded(original, source, effective(source)), original[..., :3])
    as_core_sees_it = image_tensor(original, linear=source.linear, flip_y=source.flip_y)
    for target in ENCODINGS:
        got = recoded(original, source, target)
        rows = original[::-1] if source.flip_y != target.flip_y else original
        if effective(source).linear == target.linear and (source.dtype == "uint8") == (
                target.dtype == "uint8"):  # the same light and kind of number: only the dtype changes
            np.testing.assert_array_equal(got, rows[..., :3].astype(target.dtype))
        else:  # through sRGB float once, the same values the generated pixels get
            np.testing.assert_array_equal(got, to_rgba(as_core_sees_it, target.dtype, target.flip_y,
                                                       target.linear)[..., :3])


def test_pasted_back_replaces_only_the_untouched_pixels():
    source = target = Encoding(True, True, "float32")
    original = input_array(source)
    generated = np.zeros_like(original)
    untouched = torch.zeros(16, 16, dtype=torch.bool)
    untouched[:4] = True  # the top rows of the image: the last rows of a flipped array
    out = pasted_back(generated, original, source, target, untouched)
    np.testing.assert_array_equal(out[-4:, :, :3], original[-4:, :, :3])
    assert not out[:-4, :, :3].any()


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_inpaint_outside_the_mask_is_the_input_bit_for_bit_over_the_socket(backend, dtype):
    """Blender's float images: linear light, rows bottom to top, sent back the same way."""
    linear = dtype != "uint8"
    encoding = Encoding(linear, True, dtype)
    rng = np.random.default_rng(5)
    srgb = torch.from_numpy(rng.random((64, 64, 3), dtype=np.float32))
    init = to_rgba(srgb, dtype, True, linear)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255  # rows as sent: bottom to top, like the image
    params = dict(SMALL, input_linear=linear, input_flip_y=True, linear=linear, flip_y=True, output_dtype=dtype)
    conn = connect(backend)
    conn.send({"type": "submit", "job_id": f"paste-{dtype}", "kind": "inpaint", "params": params},
              {"init_image": init, "mask": mask})
    result, arrays = events_until_terminal(conn, f"paste-{dtype}")[-1]
    conn.close()
    assert result["type"] == "result", result
    out = arrays["image"]
    assert out.dtype == init.dtype and encoding.flip_y
    np.testing.assert_array_equal(out[mask == 0][:, :3], init[mask == 0][:, :3])
    assert np.abs(out[mask > 0][:, :3].astype(np.float32) - init[mask > 0][:, :3]).max() > 0  # repainted
