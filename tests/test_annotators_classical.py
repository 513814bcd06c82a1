"""Classical annotators on synthetic scenes with known geometry, and pixel alignment at odd sizes."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from annotators import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    AnnotatorInputError,
    binary,
    blur,
    canny,
    color_palette,
    content_shuffle,
    detect_line_segments,
    inpaint,
    lineart_standard,
    lines,
    normal_from_depth,
    render_segmentation,
    scribble,
    tile,
)


def square_scene(height: int = 200, width: int = 240, box=(60, 50, 160, 130)) -> np.ndarray:
    """White square (x0, y0, x1, y1 inclusive-exclusive) on black."""
    image = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image


def distance_to_square_outline(height, width, box) -> np.ndarray:
    """Per pixel, distance in pixels to the square's boundary (between the last inside and first outside pixel)."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = np.minimum(np.abs(xs - (x0 - 0.5)), np.abs(xs - (x1 - 0.5)))
    dy = np.minimum(np.abs(ys - (y0 - 0.5)), np.abs(ys - (y1 - 0.5)))
    inside_x = (xs >= x0 - 0.5) & (xs <= x1 - 0.5)
    inside_y = (ys >= y0 - 0.5) & (ys <= y1 - 0.5)
    return np.where(inside_y, np.where(inside_x, np.minimum(dx, dy), dx), np.where(inside_x, dy, np.hypot(dx, dy)))


@pytest.mark.parametrize("resolution", [0, 200, 512])
def test_canny_finds_the_square_edges_and_nothing_else(resolution):
    box = (60, 50, 160, 130)
    edges = canny(square_scene(box=box), resolution=resolution)[0, ..., 0]
    distance = distance_to_square_outline(200, 240, box)
    assert edges.shape == (200, 240)
    assert edges[distance > 2.5].max() == 0  # no edge away from the outline
    # every side of the outline is found: each pixel along it has an edge within a pixel
    x0, y0, x1, y1 = box
    assert (edges[y0 + 3 : y1 - 3, x0 - 1 : x0 + 1].max(axis=1) > 0).all()
    assert (edges[y0 + 3 : y1 - 3, x1 - 1 : x1 + 1].max(axis=1) > 0).all()
    assert (edges[y0 - 1 : y0 + 1, x0 + 3 : x1 - 3].max(axis=0) > 0).all()
    assert (edges[y1 - 1 : y1 + 1, x0 + 3 : x1 - 3].max(axis=0) > 0).all()


def test_canny_thresholds_decide_which_edges_survive():
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 32:] = 40  # weak step
    image[:, 96:] = 255  # strong step
    strict = canny(image, resolution=0, low_threshold=200, high_threshold=250)[0, ..., 0]
    loose = canny(image, resolution=0, low_threshold=10, high_threshold=20)[0, ..., 0]
    assert strict[:, 28:36].max() == 0 and strict[:, 92:100].max() == 255
    assert loose[:, 28:36].max() == 255 and loose[:, 92:100].max() == 255
    l2 = canny(image, resolution=0, l2_gradient=True)[0, ..., 0]
    assert l2[:, 92:100].max() == 255


@pytest.mark.parametrize("angle_degrees", [0.0, 17.0, 45.0, 90.0, 123.0])
@pytest.mark.parametrize("method", ["lsd", "hough"])
def test_lines_recover_the_angle_of_a_drawn_line(angle_degrees, method):
    size = 256
    image = np.full((size, size, 3), 255, np.uint8)
    angle = math.radians(angle_degrees)
    cx = cy = size / 2
    half = 90
    start = (int(round(cx - half * math.cos(angle))), int(round(cy - half * math.sin(angle))))
    end = (int(round(cx + half * math.cos(angle))), int(round(cy + half * math.sin(angle))))
    cv2.line(image, start, end, (0, 0, 0), 3, lineType=cv2.LINE_AA)

    segments = detect_line_segments(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), method=method, min_length=40)
    assert len(segments) >= 1
    longest = segments[np.argmax(np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1]))]
    found = math.degrees(math.atan2(longest[3] - longest[1], longest[2] - longest[0])) % 180
    assert min(abs(found - angle_degrees % 180), 180 - abs(found - angle_degrees % 180)) < 1.5

    # The drawn map: its white pixels lie along the same direction (principal axis) through the centre.
    drawn = lines(image, resolution=size, method=method, min_length=40)[0, ..., 0]
    ys, xs = np.nonzero(drawn > 127)
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    mean = points.mean(axis=0)
    _, _, axes = np.linalg.svd(points - mean, full_matrices=False)
    axis_angle = math.degrees(math.atan2(axes[0, 1], axes[0, 0])) % 180
    assert min(abs(axis_angle - angle_degrees % 180), 180 - abs(axis_angle - angle_degrees % 180)) < 1.5
    assert np.hypot(*(mean - (cx, cy))) < 3


def test_lines_on_an_empty_image_draw_nothing():
    assert lines(np.full((70, 90, 3), 128, np.uint8)).max() == 0


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("strength", [0.5, 1.0, 3.0])
def test_normals_of_a_horizontal_ramp(direction, strength):
    size = 128
    ramp = np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))
    if direction < 0:
        ramp = ramp[:, ::-1].copy()
    normals = normal_from_depth(ramp, strength=strength, blur_sigma=0)[0].astype(np.float64)
    # z = strength * depth * size rises by strength * size / (size - 1) per pixel towards the near side
    slope = direction * strength * size / (size - 1)
    norm = math.sqrt(1 + slope**2)
    expected = (127.5 + 127.5 * slope / norm, 127.5, 127.5 + 127.5 / norm)
    interior = normals[4:-4, 4:-4].reshape(-1, 3)
    assert np.abs(interior - expected).max() <= 1.0
    # nearer to the right means the surface faces left: red above 128 exactly when direction > 0
    assert (interior[:, 0] > 128).all() == (direction > 0)


def test_normals_of_a_vertical_ramp_move_green_and_flat_depth_faces_the_camera():
    ramp = np.tile(np.linspace(0, 1, 96, dtype=np.float32)[:, None], (1, 80))  # nearer at the bottom: faces up
    normals = normal_from_depth(ramp, blur_sigma=0)[0]
    assert (normals[4:-4, 4:-4, 1] > 160).all()
    assert (np.abs(normals[4:-4, 4:-4, 0].astype(int) - 128) <= 1).all()
    flat = normal_from_depth(np.full((20, 30), 0.5, np.float32))[0]
    assert (np.abs(flat.astype(int) - (128, 128, 255)) <= 1).all()
    inverted = normal_from_depth(ramp, blur_sigma=0, invert_y=True)[0]
    assert (inverted[4:-4, 4:-4, 1] < 96).all()


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_normal_conventions_of_a_known_slope(strength):
    """Depth rising to the right by strength·size/(size−1) per pixel: the surface faces left with
    normal (slope, 0, 1)/√(1+slope²) in (left, up, front). normal_bae (ControlNet 1.1) puts the
    components in R, G, B; normal_midas (ControlNet 1.0) in B, G, R."""
    size = 64
    ramp = np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))
    slope = strength * size / (size - 1)
    norm = math.sqrt(1 + slope**2)
    left, up, front = 127.5 + 127.5 * slope / norm, 127.5, 127.5 + 127.5 / norm
    for convention, expected in (("normal_bae", (left, up, front)), ("normal_midas", (front, up, left))):
        normals = normal_from_depth(ramp, strength=strength, blur_sigma=0, convention=convention)[0]
        assert np.abs(normals[4:-4, 4:-4].reshape(-1, 3).astype(np.float64) - expected).max() <= 1.0, convention
    flat = np.full((20, 30), 0.5, np.float32)
    assert (normal_from_depth(flat, convention="normal_bae")[0] == (128, 128, 255)).all()
    assert (normal_from_depth(flat, convention="normal_midas")[0] == (255, 128, 128)).all()
    with pytest.raises(AnnotatorInputError, match="normal_bae"):
        normal_from_depth(flat, convention="opengl")


def test_normal_midas_matches_the_controlnet_10_formula():
    """ControlNet 1.0's app (gradio_normal2image.py with annotator/midas): x, y = 3×3 Sobel of the
    depth, z = a constant a, (x, y, z) normalised, ·127.5 + 127.5, cast to uint8, and the channels
    reversed before the map reaches control_sd15_normal. With our scale (slope = Sobel/8 ·
    strength · short side) the same normal comes out for a = 8 / (strength · short side)."""
    rng = np.random.default_rng(5)
    height, width, strength = 48, 72, 1.5
    depth = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 4)
    depth = (depth - depth.min()) / (depth.max() - depth.min())
    a = 8.0 / (strength * min(height, width))
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    normal = np.stack([x, y, np.full_like(x, a)], axis=2)
    normal /= np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    reference = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]
    ours = normal_from_depth(depth, strength=strength, blur_sigma=0, convention="normal_midas")[0]
    # Interior only (the two differ in border handling); ours rounds where the reference truncates.
    difference = ours[1:-1, 1:-1].astype(int) - reference[1:-1, 1:-1].astype(int)
    assert difference.min() >= 0 and difference.max() <= 1


def test_normals_accept_8_and_16_bit_depth_images_and_reject_nan():
    ramp16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (40, 1))
    assert normal_from_depth(ramp16).shape == (1, 40, 64, 3)
    assert normal_from_depth(np.zeros((2, 40, 64, 3), np.uint8)).shape == (2, 40, 64, 3)
    with pytest.raises(AnnotatorInputError, match="NaN"):
        normal_from_depth(np.full((8, 8), np.nan, np.float32))


def test_segmentation_draws_each_class_in_its_ade20k_colour():
    labels = np.zeros((3, 40, 50), np.int64)
    labels[0, :, 25:] = ADE20K_CLASSES.index("person")
    labels[1] = np.arange(40 * 50).reshape(40, 50) % 150
    labels[2, :10] = 255  # unlabelled
    colours = render_segmentation(labels)
    assert colours.shape == (3, 40, 50, 3) and colours.dtype == np.uint8
    assert (colours[0, :, :25] == (120, 120, 120)).all()  # wall
    assert (colours[0, :, 25:] == (150, 5, 61)).all()  # person
    assert np.array_equal(colours[1], ADE20K_PALETTE[labels[1]])
    assert (colours[2, :10] == 0).all() and (colours[2, 10:] == ADE20K_PALETTE[0]).all()
    raw = render_segmentation(np.array([[0, 1, 150]]), label_offset=1)
    assert np.array_equal(raw[0, 0], [(0, 0, 0), ADE20K_PALETTE[0], ADE20K_PALETTE[149]])


def test_segmentation_reads_label_pngs_loaded_as_float_images_and_rejects_bad_labels():
    as_image = np.full((1, 4, 4, 3), 12 / 255.0, np.float32)  # a gray label PNG loaded by ComfyUI
    assert (render_segmentation(as_image) == ADE20K_PALETTE[12]).all()
    with pytest.raises(AnnotatorInputError, match="class indices"):
        render_segmentation(np.array([[3, 151]]))
    with pytest.raises(AnnotatorInputError, match="single-channel"):
        render_segmentation(np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8))


def test_content_shuffle_is_seeded_deterministic_and_moves_content_around():
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (256, 192), interpolation=cv2.INTER_NEAREST)
    first = content_shuffle(image, seed=7)
    assert np.array_equal(first, content_shuffle(image, seed=7))
    assert not np.array_equal(first, content_shuffle(image, seed=8))
    assert np.abs(first.astype(int) - image).mean() > 20  # content really moved
    # every output colour is sampled from the input (linear interpolation between neighbours at most)
    palette = np.unique(image.reshape(-1, 3), axis=0).astype(int)
    distances = np.abs(first.reshape(-1, 1, 3).astype(int) - palette[None]).sum(axis=2).min(axis=1)
    assert np.median(distances) == 0
    frames = content_shuffle(np.stack([image, image]), seed=7)
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], first[0])


def test_inpaint_marks_masked_pixels_minus_one_or_black():
    image = np.random.default_rng(2).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), np.float32)
    mask[5:15, 10:30] = 1.0
    hint = inpaint(image, mask=mask)
    assert hint.dtype == np.float32 and hint.shape == (2, 30, 40, 3)
    assert (hint[:, 5:15, 10:30] == -1.0).all()
    keep = np.ones((30, 40), bool)
    keep[5:15, 10:30] = False
    assert np.allclose(hint[:, keep], image[:, keep] / 255.0)
    black = inpaint(image, mask=mask, masked_value="black")
    assert (black[:, 5:15, 10:30] == 0.0).all()
    half = inpaint(image, mask=np.kron(mask, np.ones((2, 2), np.float32)))  # a 2× mask is resized to the image
    assert (half[:, 6:14, 11:29] == -1.0).all()
    with pytest.raises(AnnotatorInputError, match="mask"):
        inpaint(image, mask=None)


def test_binary_splits_two_levels_with_otsu_and_a_fixed_threshold():
    image = np.full((40, 60, 3), 30, np.uint8)
    image[:, 30:] = 200
    otsu = binary(image, resolution=0)[0, ..., 0]
    assert (otsu[:, :30] == 255).all() and (otsu[:, 30:] == 0).all()  # inverted: dark -> white
    fixed = binary(image, resolution=0, threshold=100, invert=False)[0, ..., 0]
    assert (fixed[:, :30] == 0).all() and (fixed[:, 30:] == 255).all()
    assert set(np.unique(binary(image, resolution=512))) <= {0, 255}


def test_scribble_and_lineart_mark_a_dark_stroke_on_white_paper():
    image = np.full((128, 160, 3), 255, np.uint8)
    image[60:64, 20:140] = 0
    for out in (scribble(image, resolution=0), scribble(image, resolution=0, method="threshold", threshold=128),
                lineart_standard(image, resolution=0)):
        gray = out[0, ..., 0]
        assert gray[58:66, 30:130].max(axis=0).min() > 100  # the stroke is there along its whole length
        assert gray[:40].max() == 0 and gray[90:].max() == 0  # blank paper stays blank
    thick = scribble(image, resolution=0, stroke_width=5)[0, ..., 0]
    assert (thick > 0).sum() > (scribble(image, resolution=0)[0, ..., 0] > 0).sum()


def test_tile_blur_and_palette_remove_detail_but_keep_colours():
    checker = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.stack([checker, checker, checker], axis=-1)
    for out in (tile(image, resolution=0), blur(image, resolution=0)):
        assert out.shape == (1, 128, 128, 3)
        assert out.std() < image.std() / 5 and abs(out.mean() - image.mean()) < 4
    halves = np.zeros((128, 256, 3), np.uint8)
    halves[:, :128] = (200, 30, 10)
    halves[:, 128:] = (10, 40, 220)
    palette = color_palette(halves, resolution=128, cell_size=64)[0]
    assert (palette[:, :128] == (200, 30, 10)).all() and (palette[:, 128:] == (10, 40, 220)).all()


SPATIAL = [canny, lines, scribble, lineart_standard, binary, tile, blur]
BINARY_MAPS = (canny, lines, scribble, binary)  # maps ControlNets were trained on as black/white


# lines is checked by test_lines_stay_where_they_are: LSD may also pick up the inner side of an
# upsampled edge on only some sides of a square, which moves a centroid without misaligning anything.
@pytest.mark.parametrize("annotator", [a for a in SPATIAL if a is not lines], ids=lambda f: f.__name__)
@pytest.mark.parametrize("size, resolution", [((301, 457), 512), ((123, 77), 256), ((199, 201), 0)])
def test_a_feature_at_x_y_stays_at_x_y(annotator, size, resolution):
    """A dark square on light ground: the response centroid is where the square is, at odd sizes too."""
    height, width = size
    cx, cy = width * 0.63, height * 0.41
    radius = min(size) / 8
    image = np.full((height, width, 3), 230, np.uint8)
    corners = np.array([[cx - radius, cy - radius], [cx + radius, cy - radius],
                        [cx + radius, cy + radius], [cx - radius, cy + radius]])
    # cv2 draws in pixel-centre coordinates; shift=4 gives sub-pixel placement.
    cv2.fillPoly(image, [np.rint(corners * 16).astype(np.int32)], (20, 20, 20), lineType=cv2.LINE_AA, shift=4)
    out = annotator(image, resolution=resolution)
    assert out.shape == (1, height, width, 3)
    response = out[0, ..., 0].astype(np.float64)
    if annotator in (tile, blur):
        response = 255.0 - response  # the disc is dark in these maps
    ys, xs = np.mgrid[0:height, 0:width]
    near = np.maximum(abs(xs - cx), abs(ys - cy)) < radius * 2.5  # ignore anything else
    weights = np.where(near, response, 0.0)
    assert weights.sum() > 0
    if annotator in BINARY_MAPS:
        # Two-level maps: a stroke resampled to the input size and re-thresholded is 4 px wide on one
        # side and 5 px on the other, which moves a mass centroid. The outer extent of the response
        # is what must stay put: its centre is the square's centre.
        assert set(np.unique(out)) <= {0, 255}
        found_y, found_x = np.nonzero(weights)
        assert abs((found_x.min() + found_x.max()) / 2 - cx) < 1.0  # pixel-index coordinates, as cv2 drew
        assert abs((found_y.min() + found_y.max()) / 2 - cy) < 1.0
        return
    assert abs((weights * xs).sum() / weights.sum() - cx) < 1.0
    assert abs((weights * ys).sum() / weights.sum() - cy) < 1.0


@pytest.mark.parametrize("size, resolution", [((301, 457), 512), ((123, 77), 256), ((199, 201), 0)])
def test_lines_stay_where_they_are(size, resolution):
    height, width = size
    row, column = int(height * 0.37), int(width * 0.71)
    image = np.full((height, width, 3), 240, np.uint8)
    image[row, 5:-5] = 0  # one-pixel horizontal line
    image[5:-5, column] = 0  # one-pixel vertical line
    drawn = lines(image, resolution=resolution, min_length=10)[0, ..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    horizontal = drawn[:, width // 10 : column - 8]
    vertical = drawn[height // 10 : row - 8]
    assert abs((horizontal.sum(axis=1) * ys[:, 0]).sum() / horizontal.sum() - row) < 1.0
    assert abs((vertical.sum(axis=0) * xs[0]).sum() / vertical.sum() - column) < 1.0


@pytest.mark.parametrize("annotator", SPATIAL + [color_palette, content_shuffle], ids=lambda f: f.__name__)
def test_gray_rgb_rgba_and_batch_inputs(annotator):
    rng = np.random.default_rng(3)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (45, 67), dtype=np.uint8), (0, 0), 2)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((45, 67, 1), 255, np.uint8)], axis=2)
    reference = annotator(rgb, resolution=64)
    assert np.array_equal(annotator(gray, resolution=64), reference)
    assert np.array_equal(annotator(rgba, resolution=64), reference)
    assert np.array_equal(annotator(rgb.astype(np.float32) / 255.0, resolution=64), reference)
    batch = annotator(np.stack([rgb, rgb[::-1]]), resolution=64)  # batching never changes a frame
    assert np.array_equal(batch[0], reference[0])
    assert np.array_equal(batch[1], annotator(np.ascontiguousarray(rgb[::-1]), resolution=64)[0])


@pytest.mark.parametrize("annotator", SPATIAL + [color_palette, content_shuffle], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "bad, words",
    [(np.zeros((0, 0, 3), np.uint8), "non-empty"), (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
     (np.zeros((8, 8, 3), np.uint16), "16-bit")],
)
def test_bad_images_give_clear_errors(annotator, bad, words):
    with pytest.raises(AnnotatorInputError) as info:
        annotator(bad)
    assert words in str(info.value)


# ---- binary maps stay binary at every input size (ControlNets were trained on black/white maps) ----

def outline_scene(height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A white square on black whose sides sit at fractions of the size, plus a one-pixel diagonal."""
    box = (int(width * 0.23), int(height * 0.31), int(width * 0.71), int(height * 0.77))
    image = square_scene(height, width, box)
    cv2.line(image, (3, height - 4), (box[0] - 6, box[3] + 2), (255, 255, 255), 1)
    return image, box


@pytest.mark.parametrize("annotator", BINARY_MAPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("size, resolution", [((1024, 1024), 512), ((999, 1537), 512), ((301, 457), 512),
                                              ((777, 333), 256), ((130, 97), 64)])
def test_binary_maps_are_exactly_black_and_white_at_any_size(annotator, size, resolution):
    image, _ = outline_scene(*size)
    out = annotator(image, resolution=resolution)
    assert out.shape == (1, *size, 3)
    values = np.unique(out)
    assert set(values.tolist()) <= {0, 255}, f"gray levels {values[(values > 0) & (values < 255)][:8]}"
    assert (out == 255).any()


@pytest.mark.parametrize("size, resolution", [((1024, 1024), 512), ((999, 1537), 512), ((333, 517), 512),
                                              ((777, 333), 256)])
def test_canny_edges_stay_on_the_outline_after_the_resize_back(size, resolution):
    """Enlarged (1024² from 512) or shrunk (333 from 512): every side of the square is found within
    a pixel of where it is, and there is no edge anywhere else."""
    height, width = size
    box = (int(width * 0.23), int(height * 0.31), int(width * 0.71), int(height * 0.77))
    edges = canny(square_scene(height, width, box), resolution=resolution)[0, ..., 0]
    distance = distance_to_square_outline(height, width, box)
    scale = max(1.0, min(size) / resolution)  # an edge one detection pixel wide covers `scale` input pixels
    assert edges[distance > scale + 1.5].max() == 0
    x0, y0, x1, y1 = box
    reach = int(math.ceil(scale)) + 1
    assert (edges[y0 + 4 : y1 - 4, x0 - reach : x0 + reach].max(axis=1) == 255).all()
    assert (edges[y0 + 4 : y1 - 4, x1 - reach : x1 + reach].max(axis=1) == 255).all()
    assert (edges[y0 - reach : y0 + reach, x0 + 4 : x1 - 4].max(axis=0) == 255).all()
    assert (edges[y1 - reach : y1 + reach, x0 + 4 : x1 - 4].max(axis=0) == 255).all()


@pytest.mark.parametrize("size", [(333, 517), (400, 410), (211, 600)])
def test_one_pixel_lines_survive_shrinking_unbroken(size):
    """Detected at 512 and shrunk to the input, the map of a one-pixel line is never broken: each
    column along the line keeps a white pixel, next to the line."""
    height, width = size
    row = int(height * 0.43)
    image = np.full((height, width, 3), 240, np.uint8)
    image[row, 10:-10] = 0
    drawn = lines(image, resolution=512, min_length=10)[0, ..., 0]
    band = drawn[:, 20:-20]
    assert (band.max(axis=0) == 255).all()
    rows = np.nonzero(band.max(axis=1))[0]
    assert rows.min() >= row - 2 and rows.max() <= row + 2


def test_fit_restore_binary_threshold_rules():
    """Hand-built cases. Shrinking by s, a one-pixel line spreads a coverage of 1/s over the output
    pixels it falls in: a line keeps each pixel covered by at least 1/(2s), so the most-covered one
    always survives; a region keeps pixels at least half covered."""
    from annotators.common import fit_to_resolution

    def back(output_side, detection_side, columns, **kwargs):
        _, fit = fit_to_resolution(np.zeros((output_side, output_side), np.uint8), detection_side, multiple=1)
        detection = np.zeros((detection_side, detection_side, 1), np.uint8)
        for column, value in columns:
            detection[:, column] = value
        out = fit.restore_binary(detection, **kwargs)[..., 0]
        assert set(np.unique(out).tolist()) <= {0, 255}
        return sorted(set(np.nonzero(out)[1].tolist()))

    # s = 4: detection columns 80..83 are output column 20, which one line column covers by 1/4
    assert back(40, 160, [(81, 255)], lines=True) == [20]
    assert back(40, 160, [(81, 255)]) == []  # not a region pixel
    assert back(40, 160, [(80, 255), (81, 1), (82, 200)]) == [20]  # any non-zero value is "on"
    # s = 1.5: output k covers detection [1.5k, 1.5k + 1.5). Column 61 straddles outputs 40 and 41
    # (1/3 each = the threshold 1/(2s): both kept); column 60 lies inside output 40 (2/3): one pixel.
    assert back(60, 90, [(61, 255)], lines=True) == [40, 41]
    assert back(60, 90, [(60, 255)], lines=True) == [40]
    # enlarging (s < 1) a line keeps its scaled width: 1 px at 40 becomes 2 px at 80
    assert back(80, 40, [(20, 255)], lines=True) == [40, 41]
