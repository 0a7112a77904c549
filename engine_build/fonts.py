"""Printed digits rendered from fonts on this machine, framed exactly like MNIST.

MNIST has only handwriting; printed forms and sudoku use font digits. Training
mixes in digits from the TRAINING_FAMILIES (Debian's fonts-dejavu-core,
fonts-liberation, fonts-roboto-unhinted and fonts-open-sans) and OpenCV's Hershey
stroke fonts; tests measure on HELD_OUT_FAMILIES (fonts-freefont-ttf), which
training never sees.

Roboto, Open Sans and the Hershey faces matter: DejaVu and Liberation both draw
"1" with a foot, and without a flagged, footless "1" in training the network
reads the "1" of Helvetica-like fonts as 7, as MNIST's sevens look alike.
"""

import glob
import os

import cv2
import numpy as np

from daemon import preprocess

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts"))
TRAINING_FAMILIES = (
    "DejaVuSans",
    "DejaVuSerif",
    "LiberationSans",
    "LiberationSerif",
    "LiberationMono",
    "Roboto",
    "OpenSans",
)
HELD_OUT_FAMILIES = ("FreeSans", "FreeSerif", "FreeMono")
EXCLUDED = ("ExtraLight", "Thin", "Hairline", "MathTeX")
HERSHEY_PREFIX = "hershey:"
HERSHEY_FACES = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "complex-italic": cv2.FONT_HERSHEY_COMPLEX | cv2.FONT_ITALIC,
    "triplex-italic": cv2.FONT_HERSHEY_TRIPLEX | cv2.FONT_ITALIC,
}
# Stroke width as a fraction of the digit's height: light, regular, bold.
HERSHEY_WEIGHTS = (0.06, 0.11, 0.16)


def find_fonts(families):
    """Sorted .ttf/.otf paths whose file name starts with one of ``families``."""
    found = []
    for folder in FONT_DIRS:
        for pattern in ("**/*.ttf", "**/*.otf"):
            for path in glob.glob(os.path.join(folder, pattern), recursive=True):
                name = os.path.basename(path)
                if name.startswith(tuple(families)) and not any(x in name for x in EXCLUDED):
                    found.append(path)
    return sorted(set(found))


class MissingFontsError(FileNotFoundError):
    """Training families with no font file on this machine."""


def missing_training_families():
    """The TRAINING_FAMILIES no font file on this machine belongs to (``make train-fonts``
    installs them all)."""
    found = [os.path.basename(path) for path in find_fonts(TRAINING_FAMILIES)]
    return [family for family in TRAINING_FAMILIES if not any(name.startswith(family) for name in found)]


def training_fonts():
    """TrueType files of TRAINING_FAMILIES, then every Hershey face in every weight
    (``hershey:<face>:<weight>``; OpenCV draws those, so they exist wherever it does)."""
    hershey = [
        "%s%s:%s" % (HERSHEY_PREFIX, face, weight)
        for face in sorted(HERSHEY_FACES)
        for weight in HERSHEY_WEIGHTS
    ]
    return find_fonts(TRAINING_FAMILIES) + hershey


def render_hershey(name, digit, size):
    """A Hershey digit about as tall as a TrueType digit rendered at ``size`` points."""
    try:
        face, weight = name[len(HERSHEY_PREFIX) :].rsplit(":", 1)
        flags, stroke = HERSHEY_FACES[face], float(weight)
    except (KeyError, ValueError) as exc:
        raise ValueError("bad Hershey font %r (want hershey:<face>:<weight>): %s" % (name, exc)) from exc
    height = 0.72 * size
    (_, unit_height), _ = cv2.getTextSize("0", flags, 1.0, 1)
    thickness = max(1, int(round(stroke * height)))
    canvas = np.zeros((int(size * 2), int(size * 2)), np.uint8)
    cv2.putText(
        canvas,
        str(digit),
        (size // 2, int(size * 1.5)),
        flags,
        height / unit_height,
        255,
        thickness,
        cv2.LINE_AA,
    )
    x, y, w, h = cv2.boundingRect(canvas)
    return canvas[y : y + h, x : x + w]


def render_glyph(font_path, digit, size=64):
    """White digit on black, cropped to its ink (uint8); ``font_path`` may name a Hershey face."""
    if font_path.startswith(HERSHEY_PREFIX):
        return render_hershey(font_path, digit, size)
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, size)
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), str(digit), fill=255, font=font)
    image = np.array(canvas)
    x, y, w, h = cv2.boundingRect(image)
    return image[y : y + h, x : x + w]


def render_digits(font_paths, per_font_digit, rng):
    """(images uint8 [N,28,28] in MNIST framing, labels) with weight, slant and blur variations."""
    images, labels = [], []
    for path in font_paths:
        for digit in range(10):
            glyph = render_glyph(path, digit)
            for _ in range(per_font_digit):
                images.append(vary(glyph, rng))
                labels.append(digit)
    return np.array(images, np.uint8), np.array(labels, np.uint8)


def vary(glyph, rng):
    """A printed digit as the daemon sees it: weight and slant varied, inked dark on a lit sheet
    of paper, then either blurred like a close camera or photographed small (``camera``), and
    through daemon.preprocess exactly as at run time."""
    padded = cv2.copyMakeBorder(glyph, 8, 8, 8, 8, cv2.BORDER_CONSTANT, value=0)
    weight = rng.integers(-1, 3)
    kernel = np.ones((3, 3), np.uint8)
    if weight > 0:
        padded = cv2.dilate(padded, kernel, iterations=int(weight))
    elif weight < 0:
        padded = cv2.erode(padded, kernel, iterations=1)
    shear = rng.uniform(-0.12, 0.12)
    height, width = padded.shape
    matrix = np.float32([[1, shear, -shear * height / 2.0], [0, 1, 0]])
    padded = cv2.warpAffine(padded, matrix, (width, height))
    side = int(max(padded.shape) * rng.uniform(1.3, 1.8))
    paper = np.full((side, side), rng.uniform(170, 230), np.float32)
    paper += np.linspace(-1, 1, side)[None, :] * rng.uniform(0, 20)
    y0, x0 = (side - height) // 2, (side - width) // 2
    alpha = padded.astype(np.float32) / 255.0 * rng.uniform(0.75, 0.95)
    region = paper[y0 : y0 + height, x0 : x0 + width]
    region[:] = region * (1 - alpha) + rng.uniform(20, 60) * alpha
    if rng.random() < CELL_WALL_SHARE:
        cell_walls(paper, rng)
    seen = as_the_daemon_sees(paper, glyph.shape[0], rng)
    return preprocess.fit_digit(padded) if seen is None else seen


def as_the_daemon_sees(paper, mark_height, rng):
    """``paper`` (float32, ink drawn on it) photographed, small like ``camera`` or close and
    blurred, then through daemon.preprocess as at run time: the uint8 28x28 tensor the
    network gets, or None when preprocessing finds the crop empty."""
    if rng.random() < CAMERA_SHARE:
        sheet = camera(paper, mark_height, rng)
    else:
        sheet = cv2.GaussianBlur(paper + rng.normal(0, 3, paper.shape), (5, 5), rng.uniform(0.5, 1.5))
    prepared = preprocess.prepare(np.clip(sheet, 0, 255).astype(np.uint8))
    if prepared.empty:
        return None
    return np.round(prepared.tensor[:, :, 0] / preprocess.PIXEL_SCALE).astype(np.uint8)


# Share of printed training digits photographed small: phone photos of a newspaper sudoku
# have digits 10-30 px tall, blurred, faint and JPEG-compressed, whose strokes the
# binarisation thickens and whose loops it fills. Without them in training such digits read
# with low confidence or as a bolder neighbour (8 -> 0, 7 -> 1, 3 -> 5).
CAMERA_SHARE = 0.6
# Share drawn with pieces of the walls of a grid cell or form box at the edges: a
# crop's frame is never cut exactly, and a digit with a bit of wall is still that digit.
CELL_WALL_SHARE = 0.2


def cell_walls(paper, rng):
    """Draw one or two dark wall pieces along the edges of ``paper`` (float32, in place)."""
    side = paper.shape[0]
    level = float(np.median(paper)) * rng.uniform(0.2, 0.5)
    thick = max(1, int(side * rng.uniform(0.01, 0.04)))
    for edge in rng.choice(4, int(rng.integers(1, 3)), replace=False):
        start, end = sorted(rng.uniform(0, 1, 2) * side)
        end = max(end, start + 0.3 * side)
        offset = int(rng.uniform(0, 0.06) * side)
        if edge == 0:
            paper[offset : offset + thick, int(start) : int(end)] = level
        elif edge == 1:
            paper[side - offset - thick : side - offset, int(start) : int(end)] = level
        elif edge == 2:
            paper[int(start) : int(end), offset : offset + thick] = level
        else:
            paper[int(start) : int(end), side - offset - thick : side - offset] = level


def camera(paper, glyph_height, rng):
    """``paper`` (float32, dark ink drawn on it) as a small, blurred, noisy JPEG photo of it,
    scaled back up the way a grid cell is warped to a fixed size."""
    target = rng.uniform(9, 30)
    scale = min(1.0, target / float(glyph_height))
    small = cv2.resize(paper, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # fainter print and a greyer sheet, as newsprint under room light
    paper_level = float(np.median(small))
    small = paper_level + (small - paper_level) * rng.uniform(0.3, 1.0)
    small = cv2.GaussianBlur(small, (0, 0), rng.uniform(0.4, 1.8))
    small = np.clip(small + rng.normal(0, rng.uniform(0.5, 5), small.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
    if ok:
        small = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    up = rng.uniform(1.0, 2.5)
    return cv2.resize(small, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR).astype(np.float32)
