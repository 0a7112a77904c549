"""Turn a crop into the model's input: float32 28x28x1 in [0, 1], ink bright on dark.

This module is the only place where normalisation lives. Training
(``engine_build``) imports ``normalise_uint8`` and the constants below, so the
network sees exactly what the daemon feeds it.
"""

import logging

import cv2
import numpy as np

from daemon import config

log = logging.getLogger(__name__)

INPUT_SIZE = 28  # MNIST image side
DIGIT_BOX = 20  # MNIST digits are fitted into 20x20, then centred by mass in 28x28
PIXEL_SCALE = 1.0 / 255.0
INPUT_DTYPE = np.float32
NORMALISATION = {
    "scale": PIXEL_SCALE,
    "offset": 0.0,
    "range": [0.0, 1.0],
    "polarity": "ink bright on dark background",
    "description": "float32 = uint8 * (1/255); digit fitted into 20x20, centre of mass at 14,14",
}
THRESHOLD_METHODS = ("otsu", "fixed", "adaptive")
# Crops are first reduced so their longer side is at most this: the digit ends up 20 px
# anyway, and every later step then costs a fraction (a 200x200 crop: ~6x less work).
WORK_SIZE = 128
BLUR_REFERENCE = 200.0
POLARITY_SIZE = 24  # polarity is judged on a copy this small: it needs the strokes, not detail
# A crop whose bright-ink share lies within this of a half leaves its polarity open (a bold
# meter digit that fills its box): it is prepared both ways and the way the model reads
# surer is kept. Held-out meter digits with auto polarity: 98.3 -> 99.4 % (as with the
# polarity set); 11 % of them are read twice.
POLARITY_OPEN = 0.15
# A page's polarity: its bright-ink share on a copy this small overrules the thin-feature
# test when it lies more than REGION_SHARE_CLEAR from a half (region_ink_is_bright)
REGION_SHARE_SIZE = 128
REGION_SHARE_CLEAR = 0.2
SHARPEN_FRACTION = 24.0


def normalise_uint8(images):
    """uint8 images [N,28,28] or [N,28,28,1] with ink bright -> float32 [N,28,28,1] in [0,1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images.astype(INPUT_DTYPE) * INPUT_DTYPE(PIXEL_SCALE)


class PreprocessParams(object):
    """Settings of the crop -> tensor conversion: the config's ``preprocess`` section. Names,
    defaults and ranges are defined once, in its schema (``daemon.config.PREPROCESS``)."""

    def __init__(self, **values):
        fields = config.PREPROCESS.fields
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TypeError("unknown preprocess settings: %s" % ", ".join(unknown))
        for name, field in fields.items():
            setattr(self, name, values.get(name, field.default))

    @classmethod
    def from_config(cls, section):
        """From the config's ``preprocess`` section or a dict (missing keys keep their defaults)."""
        if section is None:
            return cls()
        values = section if isinstance(section, dict) else section.as_dict()
        return cls(**values)


class PreparedCrop(object):
    """Result of preprocessing one crop."""

    __slots__ = ("tensor", "empty", "reason", "ink_mask", "ink_box", "other")

    def __init__(self, tensor, empty, reason="", ink_mask=None, ink_box=None):
        self.tensor = tensor  # float32 [28,28,1]
        self.empty = empty  # True when no digit is present; tensor is then all zero
        self.reason = reason
        self.ink_mask = ink_mask  # uint8 mask of the ink kept, in crop coordinates (debug view)
        self.ink_box = ink_box  # (x, y, w, h) of the ink inside the crop, or None
        # the crop prepared with the other polarity, when its own left the polarity open
        # (POLARITY_OPEN): the model's reading of both settles it (``take_other``)
        self.other = None

    def take_other(self):
        """Become the crop as prepared with the other polarity (the model read it surer)."""
        other = self.other
        self.tensor, self.empty, self.reason = other.tensor, other.empty, other.reason
        self.ink_mask, self.ink_box, self.other = other.ink_mask, other.ink_box, None


def to_gray(image):
    """Any 8- or 16-bit gray/BGR/BGRA image -> uint8 gray."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        elif np.issubdtype(image.dtype, np.floating):
            scale = 255.0 if image.max(initial=0.0) <= 1.0 else 1.0
            image = np.clip(image * scale, 0, 255).astype(np.uint8)
        else:
            image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError("unsupported image shape %s" % (image.shape,))


def _ink_bright(gray, params, bright):
    """Return the image with ink bright on a dark background (``bright``: whether it is so
    already).

    With ``flatten`` the paper's own light is taken away first (a closing or opening wider
    than any stroke is the paper without the ink): shadows, vignetting and light falling
    off to one side then leave the paper at 0 everywhere, and one threshold fits all of it."""
    if not params.flatten:
        return gray if bright else cv2.bitwise_not(gray)
    side = _background_kernel(gray)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    return cv2.morphologyEx(gray, cv2.MORPH_TOPHAT if bright else cv2.MORPH_BLACKHAT, kernel)


def _shrunk(gray, longest):
    if max(gray.shape) <= longest:
        return gray
    factor = float(longest) / max(gray.shape)
    return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def reduction_interpolation(scale):
    """The resize flag for shrinking by ``scale`` (< 1): bilinear while each pixel has at most
    two neighbours to average, at a fraction of the cost of INTER_AREA's general
    (non-integer) path; INTER_AREA beyond that, so no stroke falls between samples."""
    return cv2.INTER_LINEAR if scale > 0.5 else cv2.INTER_AREA


def block_average(gray, factor, min_side=3):
    """``gray`` averaged over ``factor`` x ``factor`` blocks (OpenCV's INTER_AREA is several
    times faster for a whole factor); ``gray`` itself when ``factor`` <= 1 or the result would
    be narrower than ``min_side``."""
    height, width = gray.shape[0] // factor, gray.shape[1] // factor
    if factor <= 1 or min(height, width) < min_side:
        return gray
    return cv2.resize(
        gray[: height * factor, : width * factor], (width, height), interpolation=cv2.INTER_AREA
    )


def bright_ink_share(gray, size=POLARITY_SIZE):
    """The share of a crop's contrast that lies above its paper (0..1): near 1 light ink on
    dark paper, near 0 dark ink on light.

    The paper is the majority of any neighbourhood, so a median over a third of the crop
    is the paper's local level, shadow or not; the ink is on the side of it that holds
    more contrast. A shadow, a dark margin or vignetting moves the median with it, so they
    do not flip the answer as "the border is paper" did. A bold digit that fills its box
    (a meter's drum, a seven-segment display) leaves stretches where the ink is the majority
    too: the share then comes out near a half (POLARITY_OPEN)."""
    # the smallest whole factor that brings it to ``size`` or less: the median is cheaper
    small = block_average(gray, -(-max(gray.shape) // size))
    kernel = _background_kernel(small)
    paper = cv2.medianBlur(small, kernel)
    # near the border the median window runs off the crop and repeats its edge (a dark margin
    # there would become "paper"): judge where the window fits
    inset = min(kernel // 2, (min(small.shape) - 1) // 3)
    inner = (slice(inset, small.shape[0] - inset), slice(inset, small.shape[1] - inset))
    darker = cv2.sumElems(cv2.subtract(paper[inner], small[inner]))[0]
    brighter = cv2.sumElems(cv2.subtract(small[inner], paper[inner]))[0]
    return brighter / (brighter + darker) if brighter + darker > 0 else 0.0


def _background_kernel(gray):
    """Odd kernel side for the paper's local level: a third of the crop, wider than a stroke."""
    return max(3, (min(gray.shape) // 3) | 1)


# The grey paper is brought to by ``even_light``: the ink's contrast then reads the same in
# daylight, a dim room or a shadow, and every fixed grey level after it means the same.
EVEN_PAPER = 200
# closings wider than this many pixels run on a block-averaged copy (a 190 px closing of a
# 960x540 frame: 0.6 ms). Blocks of 11 px (at 16) let a dark margin's edge bleed into the
# paper's light beside it, and a digit there joined the margin's stroke
EVEN_LIGHT_STEP = 64
# paper_light's blur before its line closings (sigma, px) and the mean after them (px): on
# the real photos at JPEG quality 25, 140 of 160 grids exact without either, 144 with both
PAPER_LIGHT_BLUR = 1.0
PAPER_LIGHT_MEAN = 5
# darker than a quarter of EVEN_PAPER is no paper (a black table, a dark margin): lifted no
# more than this, its sensor noise and JPEG blocks stay too faint to pass for strokes
EVEN_MAX_GAIN = 4


def even_light(gray, side, by_lines=False):
    """Dark ink on light paper with the paper's light made even: each pixel over the paper's
    own light around it, scaled so the paper is ``EVEN_PAPER``. The paper's light is a
    closing ``side`` pixels wide (wider than any stroke: it fills the ink and keeps a
    shadow's edge where it is), so a shadow across the page, dim light or vignetting leave
    the contrast a page has in daylight. ``by_lines``: the closing is by lines, not a square
    (``paper_light``), for closings narrower than a digit."""
    # a wide closing is measured on a block-averaged copy (its cost grows with its width);
    # the paper's light varies over far more than a block
    factor = max(1, int(side) // EVEN_LIGHT_STEP)
    small = block_average(gray, factor)
    factor = gray.shape[1] / float(small.shape[1])
    side = max(3, int(round(side / factor)) | 1)
    if by_lines:
        paper = paper_light(small, side)
    else:
        square = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
        paper = cv2.morphologyEx(small, cv2.MORPH_CLOSE, square)
    if paper.shape != gray.shape:
        paper = cv2.resize(paper, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    paper = cv2.max(paper, EVEN_PAPER // EVEN_MAX_GAIN)
    return cv2.divide(gray, paper, scale=EVEN_PAPER)


def _line_kernels(length):
    """Lines ``length`` pixels long: across, down and both diagonals."""
    diagonal = np.eye(length, dtype=np.uint8)
    return (
        np.ones((1, length), np.uint8),
        np.ones((length, 1), np.uint8),
        diagonal,
        np.ascontiguousarray(diagonal[::-1]),
    )


def paper_light(gray, side):
    """The paper's light under dark ink: the brightest of four closings of ``gray`` by lines
    ``side`` pixels long (across, down, both diagonals). A line across a stroke reaches the
    paper on both sides of it, so one of the four fills each stroke.

    A square narrower than a digit does not do this at a shadow's edge: where a digit's
    strokes cross the edge, the square fits into the shadow with a corner in a stroke, so
    that part of the digit is taken for shadowed paper and divided away (a grid's closing is
    half a cell: real photos with a shadow 0.5 darker across them read 116 of 160 grids
    exact with a square, 146 with lines). A square wider than any digit (segment mode's, a
    third of the region) fits in none, and there lines read fewer numbers."""
    # a closing takes the brightest pixels along each line: on noisy or JPEG-worn paper that
    # is the noise, so the lines run over a lightly blurred copy and their light is averaged
    source = cv2.GaussianBlur(gray, (0, 0), PAPER_LIGHT_BLUR)
    paper = None
    for kernel in _line_kernels(max(3, int(side))):
        closed = cv2.morphologyEx(source, cv2.MORPH_CLOSE, kernel)
        paper = closed if paper is None else cv2.max(paper, closed)
    return cv2.blur(paper, (PAPER_LIGHT_MEAN, PAPER_LIGHT_MEAN))


def region_ink_is_bright(gray):
    """Whether the ink of a page or frame (text, lines, many digits) is brighter than the paper.

    Ink is thin: on a 256 px copy, a closing with a small disc fills dark strokes
    (black-hat), an opening removes bright ones (top-hat); the polarity whose thin
    features hold more contrast is the ink. Tables, margins, vignetting and shadows are
    wide and count for neither.

    Strokes wider than the disc (big digits close up, a bold marker) are no thin features,
    the gaps between them are: then the paper's median (``bright_ink_share`` on a
    REGION_SHARE_SIZE copy) speaks clearly, and overrules the disc when it lies more than
    REGION_SHARE_CLEAR from a half. On the 160 sudoku photos as taken it lies at 0.10 to
    0.52: where it is clear it agrees with the disc; tables and margins keep it near a half
    elsewhere, and the disc decides."""
    small = _shrunk(gray, 256)
    share = bright_ink_share(small, REGION_SHARE_SIZE)
    if abs(share - 0.5) > REGION_SHARE_CLEAR:
        return share > 0.5
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    dark_strokes = cv2.sumElems(cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, kernel))[0]
    bright_strokes = cv2.sumElems(cv2.morphologyEx(small, cv2.MORPH_TOPHAT, kernel))[0]
    return bright_strokes > dark_strokes


def _levels(image, low_fraction, high_fraction):
    """Grey levels at two quantiles of a uint8 image, from its histogram (no sorting)."""
    cumulative = cv2.calcHist([image], [0], None, [256], [0, 256]).cumsum()
    total = cumulative[-1]
    low, high = cumulative.searchsorted((low_fraction * total, high_fraction * total))
    return float(low), float(high)


def _binarise(ink, params):
    if params.threshold == "fixed":
        level = params.fixed_threshold
        return (ink > level).astype(np.uint8) * 255, level
    if params.threshold == "adaptive":
        block = max(3, params.adaptive_block_size | 1)
        mask = cv2.adaptiveThreshold(
            ink, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, block, -params.adaptive_c
        )
        inked = ink[mask > 0]
        return mask, float(inked.min()) if inked.size else 255.0
    level, mask = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return mask, level


def _morph(mask, params):
    if params.morphology == "none":
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (params.morph_kernel,) * 2)
    operation = {
        "open": cv2.MORPH_OPEN,
        "close": cv2.MORPH_CLOSE,
        "dilate": cv2.MORPH_DILATE,
        "erode": cv2.MORPH_ERODE,
    }[params.morphology]
    return cv2.morphologyEx(mask, operation, kernel)


# Grana's block-based labelling gives the same labels and stats as OpenCV's default
# (Spaghetti) in about two thirds of the time on crop-sized masks; OpenCV 3.4+ has it.
_LABELLING = (
    getattr(cv2, "CCL_GRANA", None) if hasattr(cv2, "connectedComponentsWithStatsWithAlgorithm") else None
)


def components(mask):
    """``cv2.connectedComponentsWithStats(mask, connectivity=8)``: (count, labels, stats, centroids)."""
    if _LABELLING is None:
        return cv2.connectedComponentsWithStats(mask, connectivity=8)
    return cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, _LABELLING)


def _keep_digit_components(mask, min_fraction):
    """Drop specks: keep components at least ``min_fraction`` of the largest one."""
    count, labels, stats, _ = components(mask)
    if count <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= areas.max() * min_fraction) + 1
    if len(keep) == count - 1:
        return mask
    lut = np.zeros(count, np.uint8)
    lut[keep] = 255
    return lut[labels]


def fit_digit(ink, mask=None):
    """Place ink (bright on dark, uint8) into a 28x28 MNIST frame: 20x20 box, mass-centred."""
    if mask is not None:
        ink = cv2.bitwise_and(ink, mask)
    x, y, w, h = cv2.boundingRect(ink)
    if w == 0 or h == 0:
        return np.zeros((INPUT_SIZE, INPUT_SIZE), np.uint8)
    ink = ink[y : y + h, x : x + w]
    height, width = ink.shape
    scale = float(DIGIT_BOX) / max(height, width)
    new_w = max(1, int(round(width * scale)))
    new_h = max(1, int(round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(ink, (new_w, new_h), interpolation=interpolation)
    # the 20x20 box is centred in the frame, then shifted so the ink's centre of mass is at
    # the middle: both moves are one translation of ``small`` into the 28x28 frame (moments
    # of the uint8 image: cv2.moments would take a float array two columns wide for points)
    shift_x = float((INPUT_SIZE - new_w) // 2)
    shift_y = float((INPUT_SIZE - new_h) // 2)
    moments = cv2.moments(small)
    if moments["m00"] > 0:
        shift_x = INPUT_SIZE / 2.0 - moments["m10"] / moments["m00"]
        shift_y = INPUT_SIZE / 2.0 - moments["m01"] / moments["m00"]
    matrix = np.float32([[1, 0, shift_x], [0, 1, shift_y]])
    canvas = cv2.warpAffine(
        small.astype(np.float32), matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR
    )
    return np.clip(canvas, 0, 255).astype(np.uint8)


def sharpened(gray, amount):
    """Unsharp mask at a 24th of the crop: a phone's blur runs the strokes of a small printed
    8 into its loops; this pulls them apart again before thresholding. The soft copy is two
    box blurs (close to a Gaussian, and their cost does not grow with the width)."""
    side = max(1, int(round(1.8 * max(gray.shape) / SHARPEN_FRACTION))) | 1
    soft = cv2.blur(cv2.blur(gray, (side, side)), (side, side))
    return cv2.addWeighted(gray, 1.0 + amount, soft, -amount, 0)


def pixel_noise(gray):
    """Robust standard deviation of the pixel noise: the median absolute difference from a
    3x3 median, which strokes and edges barely move."""
    difference = cv2.absdiff(gray, cv2.medianBlur(gray, 3))
    return 1.4826 * _levels(difference, 0.5, 0.5)[0]


def noise_bound(gray):
    """An upper bound of ``pixel_noise``, several times cheaper: a pixel differs from its 3x3
    median by no more than the 3x3 range (dilation less erosion) around it. A crop whose
    contrast clears the bound clears the noise; only the others need the median."""
    gradient = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, NOISE_KERNEL)
    return 1.4826 * _levels(gradient, 0.5, 0.5)[0]


NOISE_KERNEL = np.ones((3, 3), np.uint8)


def blur_size(blur_kernel, side):
    """The Gaussian kernel for a crop whose longer side is ``side`` pixels after reduction.

    ``blur_kernel`` is meant for a crop of ``BLUR_REFERENCE`` pixels (the seed's 200 px
    square); smaller crops get a proportionally smaller blur, or none: a 5 px blur on a
    35 px sudoku cell fills the loops of 6, 8, 9 and 0."""
    if not blur_kernel:
        return 0
    return int(round(blur_kernel * float(side) / BLUR_REFERENCE)) | 1


def prepare(crop, params=None):
    """Crop (gray or BGR, any size, any polarity) -> PreparedCrop with the model tensor."""
    params = params or PreprocessParams()
    if crop is None or np.asarray(crop).size == 0:
        return _empty("no pixels (a box outside the frame)")
    gray = to_gray(crop)
    if gray.size == 0 or min(gray.shape) < 4:
        return _empty("crop too small")
    # Nothing below can widen the grey range by more than the unsharp mask's 1 + 2 x amount
    # (blur, flattening and percentiles only narrow it): a crop flatter than that is empty,
    # whatever follows. Blank paper (most cells of a grid) costs two reductions, not the chain.
    spread = int(gray.max()) - int(gray.min())
    if (1.0 + 2.0 * params.sharpen) * spread < params.min_contrast:
        return _empty(
            "contrast at most %.0f below %.0f" % ((1.0 + 2.0 * params.sharpen) * spread, params.min_contrast)
        )
    scale = 1.0
    if max(gray.shape) > WORK_SIZE:
        scale = float(WORK_SIZE) / max(gray.shape)
        size = (max(4, int(round(gray.shape[1] * scale))), max(4, int(round(gray.shape[0] * scale))))
        gray = cv2.resize(gray, size, interpolation=reduction_interpolation(scale))
    if params.sharpen > 0:
        gray = sharpened(gray, params.sharpen)
    kernel = blur_size(params.blur_kernel, max(gray.shape))
    if kernel > 1:
        gray = cv2.GaussianBlur(gray, (kernel, kernel), 0)
    if params.polarity != "auto":
        return _prepared(gray, params, params.polarity == "light_on_dark", scale)
    share = bright_ink_share(gray)
    first = _prepared(gray, params, share > 0.5, scale)
    if abs(share - 0.5) >= POLARITY_OPEN:
        return first
    # the polarity is left open: both go on, and the model's reading settles it
    other = _prepared(gray, params, share <= 0.5, scale)
    if first.empty or other.empty:
        return other if first.empty and not other.empty else first
    first.other = other
    return first


def _prepared(gray, params, bright, scale):
    """``prepare`` from the ink on: the crop's (reduced, sharpened, blurred) grey with its
    polarity (``bright``: light ink on dark paper) -> PreparedCrop."""
    ink = _ink_bright(gray, params, bright)
    low, high = _levels(ink, 0.05, 0.995)
    needed = params.min_contrast
    if high - low < params.min_contrast_to_noise * noise_bound(gray):
        needed = max(needed, params.min_contrast_to_noise * pixel_noise(gray))
    if high - low < needed:
        return _empty("contrast %.0f below %.0f" % (high - low, needed))
    mask, level = _binarise(ink, params)
    mask = _morph(mask, params)
    ink_fraction = cv2.countNonZero(mask) / float(mask.size)
    if ink_fraction < params.min_ink_fraction:
        return _empty("ink %.4f below %.4f" % (ink_fraction, params.min_ink_fraction), mask)
    if ink_fraction > params.max_ink_fraction:
        return _empty("ink %.2f above %.2f" % (ink_fraction, params.max_ink_fraction), mask)
    mask = _keep_digit_components(mask, params.min_component_fraction)
    # Soft ink keeps anti-aliased edges like MNIST's: background 0, strong ink 255.
    soft = cv2.convertScaleAbs(cv2.subtract(ink, low), alpha=255.0 / max(high - low, 1.0))
    soft = cv2.bitwise_and(soft, mask)
    x, y, w, h = cv2.boundingRect(mask)
    box = tuple(int(round(v / scale)) for v in (x, y, w, h))
    digit = fit_digit(soft)
    return PreparedCrop(normalise_uint8(digit[np.newaxis])[0], False, "", mask, box)


_THICKNESS_KERNEL = np.ones((2, 2), np.uint8)


def tensor_variants(tensors):
    """Six small variations of model inputs ([N, 28, 28, 1] float32), stacked variation by
    variation: shifted one pixel right, left, down and up, thinned and thickened (a 2x2
    erosion and dilation). Reading a crop the model is unsure of in these and averaging the
    answers steadies a blurred or JPEG-worn digit; the six come back as one batch."""
    tensors = np.asarray(tensors, INPUT_DTYPE)
    variants = [np.roll(tensors, shift, axis=axis) for axis, shift in ((2, 1), (2, -1), (1, 1), (1, -1))]
    planes = [np.ascontiguousarray(t[:, :, 0]) for t in tensors]
    for operation in (cv2.erode, cv2.dilate):
        variants.append(np.stack([operation(plane, _THICKNESS_KERNEL) for plane in planes])[..., np.newaxis])
    return np.concatenate(variants)


def _empty(reason, mask=None):
    return PreparedCrop(np.zeros((INPUT_SIZE, INPUT_SIZE, 1), INPUT_DTYPE), True, reason, mask)
