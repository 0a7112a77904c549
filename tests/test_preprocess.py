"""Crop -> MNIST tensor: polarity, emptiness, centring, the shared normalisation."""

import cv2
import numpy as np
import pytest

from daemon import preprocess
from tests import synthetic
from tests.synthetic import paper_crop


def test_normalise_uint8_is_float32_in_unit_range_with_channel():
    batch = preprocess.normalise_uint8(np.array([[[0, 255]] * 28] * 2, np.uint8).repeat(14, axis=2))
    assert batch.dtype == np.float32 and batch.shape == (2, 28, 28, 1)
    assert batch.min() == 0.0 and batch.max() == 1.0


def test_dark_on_light_crop_becomes_bright_centred_digit(mnist_test):
    digit = mnist_test[0][0]
    result = preprocess.prepare(paper_crop(digit, offset=(25, -20)))
    assert not result.empty
    tensor = result.tensor[:, :, 0]
    assert tensor.shape == (28, 28) and tensor.dtype == np.float32
    assert tensor.max() > 0.9 and tensor[0].max() == 0 and tensor[:, 0].max() == 0
    moments = cv2.moments(tensor)
    assert abs(moments["m10"] / moments["m00"] - 14) < 1.0
    assert abs(moments["m01"] / moments["m00"] - 14) < 1.0


def test_polarity_is_detected_both_ways(mnist_test):
    digit = mnist_test[0][1]
    dark_on_light = preprocess.prepare(paper_crop(digit)).tensor
    light_on_dark = preprocess.prepare(255 - paper_crop(digit)).tensor
    assert np.abs(dark_on_light - light_on_dark).mean() < 0.02


def test_prepared_digit_resembles_the_mnist_original(mnist_test):
    """Fitting into 20x20 and centring by mass reproduces MNIST's own framing."""
    digit = mnist_test[0][2]
    prepared = preprocess.prepare(paper_crop(digit)).tensor[:, :, 0]
    original = digit.astype(np.float32) / 255.0
    correlation = np.corrcoef(prepared.ravel(), original.ravel())[0, 1]
    assert correlation > 0.8


@pytest.mark.parametrize(
    "crop",
    [
        np.full((200, 200), 210, np.uint8),
        np.clip(np.random.default_rng(0).normal(210, 4, (200, 200)), 0, 255).astype(np.uint8),
        np.zeros((3, 3), np.uint8),
    ],
    ids=["blank paper", "paper with sensor noise", "tiny crop"],
)
def test_empty_crops_are_reported_not_guessed(crop):
    result = preprocess.prepare(crop)
    assert result.empty and result.reason
    assert not result.tensor.any()


def test_a_speck_beside_the_digit_does_not_shift_it(mnist_test):
    digit = mnist_test[0][3]
    clean = paper_crop(digit)
    specked = clean.copy()
    specked[5:8, 5:8] = 30
    with_speck, without = preprocess.prepare(specked), preprocess.prepare(clean)
    assert with_speck.ink_box == without.ink_box
    # The speck may move the Otsu level by a grey level or two; a shifted digit would differ by ~1.0.
    assert np.abs(with_speck.tensor - without.tensor).max() < 0.05


@pytest.mark.parametrize("method", preprocess.THRESHOLD_METHODS)
def test_every_threshold_method_finds_the_digit(mnist_test, method):
    params = preprocess.PreprocessParams(threshold=method, fixed_threshold=100)
    result = preprocess.prepare(paper_crop(mnist_test[0][4]), params)
    assert not result.empty
    assert result.tensor.max() > 0.5


def test_to_gray_accepts_16_bit_bgra_and_float():
    bgra16 = np.full((10, 10, 4), 65535, np.uint16)
    assert preprocess.to_gray(bgra16).dtype == np.uint8 and preprocess.to_gray(bgra16).max() == 255
    assert preprocess.to_gray(np.ones((5, 5), np.float32)).max() == 255
    with pytest.raises(ValueError):
        preprocess.to_gray(np.zeros((4, 4, 2), np.uint8))


def shadowed(crop, rng):
    """``crop`` with what phones add: a dark table margin on one side and a soft shadow."""
    crop = crop.astype(np.float32)
    height, width = crop.shape
    yy, xx = np.mgrid[0:height, 0:width]
    shade = cv2.GaussianBlur(
        ((xx - width * rng.uniform(0.6, 1.0)) ** 2 + (yy - height * 0.2) ** 2 < (0.4 * width) ** 2).astype(
            np.float32
        ),
        (0, 0),
        6,
    )
    crop *= 1 - 0.4 * shade
    band = int(width * rng.uniform(0.06, 0.12))
    crop[:, :band] = rng.uniform(20, 60)
    return np.clip(crop, 0, 255).astype(np.uint8)


def test_polarity_ignores_dark_margins_and_shadows(mnist_test):
    """The border-is-paper rule called the paper ink whenever a table edge or a shadow lay
    along the crop's border; ink is what is thin, whatever the border holds."""
    rng = np.random.default_rng(7)
    wrong = 0
    for digit in mnist_test[0][:40]:
        crop = shadowed(paper_crop(digit, size=160, digit_size=90), rng)
        wrong += (preprocess.bright_ink_share(crop) > 0.5) + (preprocess.bright_ink_share(255 - crop) <= 0.5)
    assert wrong <= 1


def test_a_shadow_across_the_digit_is_flattened_away(mnist_test):
    digit = mnist_test[0][5]
    clean = preprocess.prepare(paper_crop(digit, size=160, digit_size=100))
    crop = paper_crop(digit, size=160, digit_size=100).astype(np.float32)
    crop[:, :70] *= 0.5  # the left part of the sheet lies in a hand's shadow
    shaded = preprocess.prepare(np.clip(crop, 0, 255).astype(np.uint8))
    assert not shaded.empty
    assert np.corrcoef(shaded.tensor.ravel(), clean.tensor.ravel())[0, 1] > 0.9


def test_faint_print_is_read_and_plain_noise_is_not(mnist_test):
    """Contrast is judged against the crop's own noise: 30 grey levels of ink on a clean
    photo is a digit; the same paper with noise and no ink stays empty."""
    faint = paper_crop(mnist_test[0][6], ink=185, paper=215)
    assert not preprocess.prepare(faint).empty
    rng = np.random.default_rng(1)
    noisy_blank = np.clip(rng.normal(200, 6, (160, 160)), 0, 255).astype(np.uint8)
    assert preprocess.prepare(noisy_blank).empty


def test_the_cheap_noise_bound_decides_every_crop_as_the_full_noise_measure(mnist_test, monkeypatch):
    """Most crops skip the 3x3 median (their contrast clears a cheap bound of the noise):
    faint digits and noisy blank paper must come out exactly as when the noise is always
    measured, with the default chain and with no blur or sharpening (where noise decides)."""
    rng = np.random.default_rng(5)
    crops = []
    for index in range(60):
        digit = paper_crop(mnist_test[0][index], ink=215 - rng.uniform(5, 90), paper=215).astype(np.float64)
        blank = np.full((160, 160), 200.0)
        for crop in (digit, blank):
            crop += rng.normal(0, rng.uniform(0, 30), crop.shape)
            crops.append(np.clip(crop, 0, 255).astype(np.uint8))
    settings = [preprocess.PreprocessParams(), preprocess.PreprocessParams(blur_kernel=0, sharpen=0)]
    fast = [preprocess.prepare(crop, params) for params in settings for crop in crops]
    monkeypatch.setattr(preprocess, "noise_bound", lambda gray: float("inf"))
    measured = [preprocess.prepare(crop, params) for params in settings for crop in crops]
    assert [(p.empty, p.reason) for p in fast] == [(p.empty, p.reason) for p in measured]
    for a, b in zip(fast, measured):
        assert np.array_equal(a.tensor, b.tensor)
    decided_by_noise = [
        p for p in fast if p.empty and p.reason.startswith("contrast ") and "below 20" not in p.reason
    ]
    assert len(decided_by_noise) > 20


def test_blur_is_scaled_to_the_crop_so_small_loops_stay_open():
    assert preprocess.blur_size(5, 200) == 5
    assert preprocess.blur_size(5, 128) == 3
    assert preprocess.blur_size(5, 40) == 1  # a sudoku cell: no blur that would fill an 8's loops
    assert preprocess.blur_size(0, 200) == 0


def test_region_polarity_of_real_photos_with_dark_borders():
    """Phone photos of newspaper sudokus, many with a dark table or page edge in frame."""
    from engine_build.eval_real import DEFAULT_DATA

    photos = sorted((DEFAULT_DATA / "train").glob("*.jpg"))[::8]
    assert len(photos) >= 20, "the sudoku photos are expected in ../shared/data/sudoku-photos"
    for path in photos:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert not preprocess.region_ink_is_bright(gray), path.name
        assert preprocess.region_ink_is_bright(255 - gray), path.name


def test_region_polarity_of_a_page_whose_strokes_are_wider_than_its_gaps(mnist_test):
    """Digits in a bold marker close up: the thin features of the page are the gaps between
    the strokes, and the paper's median, far from a half, decides."""
    for seed in range(10):
        page, _ = synthetic.bold_marker_page(np.random.default_rng(seed), *mnist_test)
        assert not preprocess.region_ink_is_bright(page), seed
        assert preprocess.region_ink_is_bright(255 - page), seed


def _holes(tensor):
    mask = (tensor[:, :, 0] > 0.4).astype(np.uint8)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return 0 if hierarchy is None else int(np.sum(hierarchy[0][:, 3] >= 0))


@pytest.mark.parametrize("height", [20, 28, 40])
def test_the_default_blur_keeps_the_loops_of_a_small_meter_8_open(height):
    big = np.full((96, 60), 230, np.uint8)
    cv2.putText(big, "8", (8, 80), cv2.FONT_HERSHEY_DUPLEX, 2.6, 20, 5, cv2.LINE_AA)
    crop = cv2.resize(big, (int(round(height * 60 / 96.0)), height), interpolation=cv2.INTER_AREA)
    prepared = preprocess.prepare(crop, preprocess.PreprocessParams(blur_kernel=5))
    assert not prepared.empty and _holes(prepared.tensor) == 2


def test_tensor_variants_shift_a_pixel_each_way_then_thin_and_thicken():
    tensors = np.zeros((2, 28, 28, 1), np.float32)
    tensors[0, 10, 10:13, 0] = 1.0  # a short bar
    tensors[1, 5:8, 5:8, 0] = 0.5  # a square
    variants = preprocess.tensor_variants(tensors)
    assert variants.shape == (12, 28, 28, 1) and variants.dtype == np.float32
    right, left, down, up, thin, thick = variants[0::2]  # the first tensor's six
    assert right[10, 11:14, 0].all() and not right[10, 10, 0]
    assert left[10, 9:12, 0].all() and not left[10, 12, 0]
    assert down[11, 10:13, 0].all() and up[9, 10:13, 0].all()
    assert thin.sum() < tensors[0].sum() < thick.sum()
    assert variants[1::2][0][5:8, 6:9, 0].min() == 0.5  # the second tensor, shifted right


def test_even_light_brings_a_shadowed_page_to_one_paper_grey_and_keeps_the_inks_contrast():
    """Half the page in a shadow (its light halved), each half with the same strokes: after
    even_light both halves have the same paper grey and the same ink, so one fixed threshold
    finds the strokes on both sides."""
    page = np.full((96, 192), 180, np.uint8)
    for left in (20, 116):
        page[30:70, left : left + 4] = 90  # a stroke: half the paper's light
        page[30:34, left : left + 30] = 90
    light = np.ones(page.shape, np.float32)
    light[:, 96:] = 0.5
    shadowed = np.round(page * light).astype(np.uint8)

    even = preprocess.even_light(shadowed, 25)

    sunlit_paper, shaded_paper = even[80:, 50:80], even[80:, 150:180]
    assert np.abs(sunlit_paper.astype(int) - preprocess.EVEN_PAPER).max() <= 2
    assert np.abs(shaded_paper.astype(int) - preprocess.EVEN_PAPER).max() <= 2
    sunlit_ink, shaded_ink = int(even[50, 21]), int(even[50, 117])
    assert abs(sunlit_ink - preprocess.EVEN_PAPER // 2) <= 2
    assert abs(shaded_ink - sunlit_ink) <= 2
    # before, the shaded paper was as dark as the sunlit ink: no one threshold fitted both
    assert int(shadowed[80, 150]) <= int(shadowed[50, 21])


def test_even_light_keeps_every_stroke_of_a_digit_on_a_shadows_edge():
    """Strokes across a shadow's slanted edge belong to neither side: a square closing took
    parts of them for the shadow's paper and divided them away (digits lying on the edge of
    a shadow were read as empty cells or as other digits). The grid's closing, half a cell
    wide, is narrower than a digit and closes by lines."""
    size = 120
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    light = 1.0 - 0.5 * cv2.GaussianBlur((rows > cols).astype(np.float32), (0, 0), 2.0)
    page = np.full((size, size), 180, np.uint8)
    cv2.line(page, (35, 50), (65, 50), 90, 5)  # a 7: its bar in the shadow,
    cv2.line(page, (65, 50), (50, 90), 90, 5)  # its stem crossing into the light
    cv2.line(page, (20, 100), (100, 20), 90, 5)  # a stroke across the edge
    shadowed = np.round(page * light).astype(np.uint8)

    even = preprocess.even_light(shadowed, 25, by_lines=True)
    square = preprocess.even_light(shadowed, 25)

    stroke = page < 135
    assert even[stroke].max() <= 0.6 * preprocess.EVEN_PAPER, even[stroke].max()  # half the paper's
    assert square[stroke].max() > 0.8 * preprocess.EVEN_PAPER  # what a square closing did
    clear = cv2.dilate(stroke.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    clear &= np.abs(rows - cols) > 8  # the light's own soft edge, a few pixels either side
    paper = even[20:-20, 20:-20][clear[20:-20, 20:-20]].astype(int)  # away from the corners
    assert np.percentile(np.abs(paper - preprocess.EVEN_PAPER), 99) <= 8


def test_even_light_lifts_a_black_margin_no_more_than_fourfold():
    """A black table beside the page is no paper: its sensor noise, lifted to the paper's
    grey, would pass for strokes."""
    rng = np.random.default_rng(5)
    page = np.full((64, 128), 180, np.uint8)
    page[:, 64:] = np.clip(rng.normal(12, 3, (64, 64)), 0, 255).astype(np.uint8)

    even = preprocess.even_light(page, 25)

    margin = even[:, 80:].astype(int)
    assert margin.max() <= preprocess.EVEN_MAX_GAIN * int(page[:, 80:].max())
    assert margin.std() <= preprocess.EVEN_MAX_GAIN * page[:, 80:].std() + 1
    assert abs(int(np.median(even[:, :48])) - preprocess.EVEN_PAPER) <= 2
