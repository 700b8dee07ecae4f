"""Texture-space masks (dream_addon/uv_mask.py): pure numpy, checked against a plain
even-odd point-in-polygon test at every pixel centre."""

import numpy as np
import pytest

from dream_addon import uv_mask


def reference(polygons, width, height):
    mask = np.zeros((height, width), bool)
    for poly in polygons:
        pts = np.asarray(poly) * (width, height)
        for r in range(height):
            for c in range(width):
                x, y, inside = c + 0.5, r + 0.5, False
                for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0)):
                    if (ya <= y < yb) or (yb <= y < ya):
                        if x < xa + (y - ya) / (yb - ya) * (xb - xa):
                            inside = not inside
                mask[r, c] |= inside
    return mask


def rasterize(polygons, width, height, extension="CLIP"):
    uvs = np.concatenate([np.asarray(p, float) for p in polygons])
    totals = np.array([len(p) for p in polygons])
    return uv_mask.rasterize_polygons(uvs, np.cumsum(totals) - totals, totals, width, height, extension)


def test_one_square_face():
    mask = rasterize([[(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]], 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(mask, expected)


def test_bottom_rows_come_first():
    mask = rasterize([[(0, 0), (1, 0), (1, 0.25), (0, 0.25)]], 4, 8)
    assert mask[:2].all() and not mask[2:].any()  # row 0 is v = 0, as Blender stores pixels


@pytest.mark.parametrize("polygons", [
    [[(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.5, 0.3), (0.1, 0.9)]],  # concave n-gon
    [[(0.1, 0.2), (0.8, 0.1), (0.6, 0.95)], [(0.5, 0.5), (0.95, 0.6), (0.7, 0.9), (0.55, 0.8)]],  # overlapping
    [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.6, 0.8), (0.6, 0.4), (0.4, 0.4), (0.4, 0.8), (0.2, 0.8)]],  # U
    [[(-0.2, -0.1), (1.3, 0.4), (0.3, 1.2)]],  # partly outside the 0..1 square (CLIP: cut off)
])
def test_matches_point_in_polygon(polygons):
    np.testing.assert_array_equal(rasterize(polygons, 37, 29), reference(polygons, 37, 29))


def test_degenerate_and_empty():
    assert not rasterize([[(0.1, 0.5), (0.9, 0.5), (0.5, 0.5)]], 16, 16).any()
    assert not uv_mask.rasterize_polygons(np.zeros((0, 2)), [], [], 8, 8).any()


def test_dilate_grows_by_a_square():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    grown = uv_mask.dilate(mask, 2)
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = True
    np.testing.assert_array_equal(grown, expected)
    np.testing.assert_array_equal(uv_mask.dilate(mask, 0), mask)


def test_rectangle_and_padding():
    rect = uv_mask.rectangle(10, 4, 0.2, 0.0, 0.5, 0.5)
    assert rect[:2, 2:5].all() and rect.sum() == 6
    assert uv_mask.padded_size(1000) == 1000 and uv_mask.padded_size(1001) == 1008 and uv_mask.padded_size(10) == 64
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    padded = uv_mask.pad_to(a, 4, 5)
    assert padded.shape == (4, 5) and (padded[:2, :3] == a).all() and padded[3, 4] == a[1, 2]


def wrapped_reference(polygons, width, height):
    """What REPEAT shows: every whole-tile shift of each polygon, rasterised into 0..1."""
    shifted = [np.asarray(p, float) - (a, b) for p in polygons for a in range(-3, 4) for b in range(-3, 4)]
    return reference(shifted, width, height)


@pytest.mark.parametrize("polygons", [
    [[(1.25, 0.25), (1.75, 0.25), (1.75, 0.75), (1.25, 0.75)]],  # shifted by +1 in u
    [[(0.8, 0.3), (1.2, 0.3), (1.2, 0.6), (0.8, 0.6)]],  # across the right edge
    [[(-0.2, -0.1), (0.3, -0.1), (0.3, 0.2), (-0.2, 0.2)]],  # across the bottom-left corner
    [[(2.1, -1.9), (2.6, -1.7), (2.3, -1.2)], [(0.1, 0.1), (0.3, 0.1), (0.2, 0.3)]],  # far tiles, and in 0..1
])
def test_uvs_outside_0_1_wrap_as_repeat_shows_them(polygons):
    expected = wrapped_reference(polygons, 20, 16)
    assert expected.any()
    np.testing.assert_array_equal(rasterize(polygons, 20, 16, "REPEAT"), expected)


def test_mirror_extension_reflects_odd_tiles():
    square = [(1.25, 0.25), (1.5, 0.25), (1.5, 0.5), (1.25, 0.5)]  # tile u = 1: mirrored to 0.5..0.75
    np.testing.assert_array_equal(rasterize([square], 16, 16, "MIRROR"),
                                  reference([[(0.5, 0.25), (0.75, 0.25), (0.75, 0.5), (0.5, 0.5)]], 16, 16))
