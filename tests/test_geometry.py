"""Geometry (docs/model.md §4, §5): frame, pyramid relation, inverse map, patch placement."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from musica_ref import geometry as G
from musica_ref import kernels as K
from musica_ref import kernels_ref as R
from musica_ref.errors import InputError
from musica_ref.pyramid import build_pyramid

coords = st.floats(-500, 2000)
sizes = st.floats(2.0, 1500.0)


@st.composite
def boxes(draw):
    x0, y0 = draw(coords), draw(coords)
    return (x0, y0, x0 + draw(sizes), y0 + draw(sizes))


@given(box=boxes(), pts=st.lists(st.tuples(coords, coords), min_size=1, max_size=20), level=st.integers(0, 2))
def test_image_level_round_trip(box, pts, level):
    fr = G.face_frame(box)
    p = np.asarray(pts)
    back = G.level_to_image(G.image_to_level(p, fr, level), fr, level)
    np.testing.assert_allclose(back, p, rtol=1e-12, atol=1e-9)


@given(bxs=st.lists(boxes(), min_size=1, max_size=5), level=st.integers(0, 2), seed=st.integers(0, 2**32 - 1))
def test_stacked_frames_give_each_frames_numbers_bit_for_bit(bxs, level, seed):
    """The cascade places and maps every face's landmarks at once (stacked_frames): the same float64
    results as frame by frame."""
    frames = [G.face_frame(b) for b in bxs]
    stacked = G.stacked_frames(frames)
    mean = np.random.default_rng(seed).uniform(0, 142, (7, 2))
    pts = np.random.default_rng(seed + 1).uniform(-50, 250, (len(frames), 7, 2))
    init = G.initial_shape(mean, stacked)
    image = G.level_to_image(pts, stacked, level)
    assert init.shape == image.shape == (len(frames), 7, 2)
    for f, fr in enumerate(frames):
        assert np.array_equal(init[f], G.initial_shape(mean, fr))
        assert np.array_equal(image[f], G.level_to_image(pts[f], fr, level))


@given(box=boxes(), pts=st.lists(st.tuples(coords, coords), min_size=1, max_size=20))
def test_level_coordinates_are_exact_powers_of_two(box, pts):
    fr = G.face_frame(box)
    p = np.asarray(pts)
    for L in (1, 2):
        np.testing.assert_allclose(G.image_to_level(p, fr, L - 1), 2 * G.image_to_level(p, fr, L),
                                   rtol=1e-13, atol=1e-9)


@given(box=boxes())
def test_frame_constants(box):
    fr = G.face_frame(box)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    assert fr.scale == pytest.approx(G.BB_SIZE / max(w, h))
    # the box corners land at the margin and at margin + box size, in level-0 pixels
    c = G.image_to_level([(x0, y0), (x1, y1)], fr, 0)
    np.testing.assert_allclose(c[0], fr.box_offset, atol=1e-9)
    np.testing.assert_allclose(c[1] - c[0], (w * fr.scale, h * fr.scale), rtol=1e-12)
    assert max(c[1] - c[0]) == pytest.approx(G.BB_SIZE)
    # level shapes: every pixel centre inside the frame, halving (within one pixel) from level to level
    (H0, W0), (H1, W1), (H2, W2) = fr.level_shapes
    assert max(H0, W0) == 228                                   # floor(1.6 * 142) + 1
    for (a, b) in ((H0, H1), (H1, H2), (W0, W1), (W1, W2)):
        assert abs((a - 1) / 2 - (b - 1)) <= 0.5 + 1e-9


def test_level_pixels_sample_the_right_image_points():
    """A level resampled from an image whose value is its own x coordinate reads back level_to_image."""
    H, W = 300, 400
    img = np.repeat(np.tile(np.arange(W, dtype=np.float32), (H, 1))[:, :, None], 3, axis=2)
    fr = G.face_frame((150.0, 100.0, 250.0, 220.0))
    for L in range(3):
        (ox, oy), step, (h, w) = G.sampling_grid(fr, L)
        lv = K.resample(img, ox, oy, step, h, w)
        r, c = h // 2, w // 2
        x_img = G.level_to_image([(c, r)], fr, L)[0, 0]
        assert lv[r, c, 0] == pytest.approx(x_img, abs=1e-3)      # the tent keeps linear ramps exact


@given(seed=st.integers(0, 10**6), cx=st.integers(0, 59), cy=st.integers(0, 49),
       fx=st.floats(0, 0.999), fy=st.floats(0, 0.999))
def test_patch_centred_on_a_pixel_is_the_plain_slice(seed, cx, cy, fx, fy):
    level = np.random.default_rng(seed).standard_normal((50, 60, 3)).astype(np.float32)
    corners = G.patch_corners([(cx + fx, cy + fy)])
    assert tuple(corners[0]) == (cx - 7, cy - 7)
    patch = K.extract_patches(level, corners, G.PATCH_SIZE)[0]
    if 7 <= cx <= 60 - 7 and 7 <= cy <= 50 - 7:
        np.testing.assert_array_equal(patch, level[cy - 7:cy + 7, cx - 7:cx + 7])
    # the landmark's own pixel sits at patch index (7, 7)
    np.testing.assert_array_equal(patch[7, 7], level[cy, cx])


@given(seed=st.integers(0, 10**6), x=st.floats(-30, 90), y=st.floats(-30, 80))
def test_patch_is_zero_outside_the_image(seed, x, y):
    level = (np.random.default_rng(seed).random((50, 60, 3)) + 1).astype(np.float32)   # never 0 inside
    c = G.patch_corners([(x, y)])[0]
    patch = K.extract_patches(level, G.patch_corners([(x, y)]), G.PATCH_SIZE)[0]
    rows = c[1] + np.arange(14)
    cols = c[0] + np.arange(14)
    inside = ((rows >= 0) & (rows < 50))[:, None] & ((cols >= 0) & (cols < 60))[None, :]
    assert np.all(patch[~inside] == 0)
    assert np.all(patch[inside] >= 1)


def test_bad_boxes_raise_input_error():
    for box, words in [((0, 0, 0, 10), "zero or negative"), ((5, 5, 1, 10), "zero or negative"),
                       ((0, 0, np.nan, 3), "non-finite"), ((0, 0, 3), "4 numbers"), ("abcd", "4 numbers"),
                       ((0, 0, np.inf, 3), "non-finite")]:
        with pytest.raises(InputError, match=words):
            G.check_box(box)
    with pytest.raises(InputError, match="outside"):
        G.check_box((500, 500, 600, 600), (100, 100))


@given(x0=st.floats(-300, 99), y0=st.floats(-300, 79), w=st.floats(0.01, 500), h=st.floats(0.01, 500))
def test_pyramid_is_finite_and_normalised(x0, y0, w, h):
    box = (x0, y0, x0 + w, y0 + h)
    img = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    fr = G.face_frame(box)
    levels = build_pyramid(img, fr)
    assert [lv.shape[:2] for lv in levels] == list(fr.level_shapes)
    for lv in levels:
        assert lv.dtype == np.float32 and np.all(np.isfinite(lv))
    m, s = float(levels[0].astype(np.float64).mean()), float(levels[0].astype(np.float64).std())
    assert abs(m) < 1e-4 and (abs(s - 1) < 1e-4 or s == 0)


def test_resample_weights_rows_sum_to_one_inside():
    w = R.resample_weights(np.linspace(10, 30, 57), 3.7, 60)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)


@given(box=boxes())
def test_every_level_fits_the_canvas(box):
    fr = G.face_frame(box)
    for L in range(3):
        H, W = fr.level_shapes[L]
        assert H <= G.max_level_shape(L)[0] and W <= G.max_level_shape(L)[1]
    assert G.max_level_shape(0) == (228, 228)
