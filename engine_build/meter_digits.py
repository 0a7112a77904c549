"""Utility-meter digits rendered here: counter drums and seven-segment displays.

Public meter image sets carry no licence that allows training on them (and one of them is
used to measure), so the digits a meter shows are drawn here, photographed small and
through ``daemon.preprocess`` exactly as at run time:

- **drums**: a strip of digits on a drum seen through a window, in the training typefaces
  (``fonts.TRAINING_FAMILIES``; FreeFont is held out for tests), white on black, black on
  white, red on white and white on red, with slivers of the neighbours above and below,
  sometimes rolled part-way to the next digit. Rolled between 30 % and 70 % of the way the
  crop is labelled ``TRANSITION_CLASS`` ("digit in transition"); near a digit (< 12 %) it
  is that digit; the ambiguous bands between are never drawn.
- **seven segments**: LCD (dark segments on a grey, green or cyan backlight, the unlit
  segments faintly visible or not) and LED (bright segments on black), upright or italic,
  thin or bold, low contrast.

Each crop is 20-40 px tall, blurred, noisy and JPEG-compressed before preprocessing.
"""

import argparse
import sys

import cv2
import numpy as np

from daemon import preprocess
from daemon.model_meta import TRANSITION_CLASS
from engine_build import fonts

# (digit colour, drum colour, frame colour) in BGR; the polarity the crop has
DRUM_COLOURS = (
    ((235, 235, 235), (25, 25, 25), (60, 60, 60), True),  # white on black, grey face
    ((20, 20, 20), (230, 230, 230), (120, 120, 120), False),  # black on white
    ((30, 30, 200), (225, 225, 230), (90, 90, 90), False),  # red on white
    ((235, 235, 235), (30, 30, 170), (40, 40, 40), True),  # white on red
    ((25, 25, 25), (200, 215, 215), (40, 40, 40), False),  # black on cream, dark face
)
# (lit segment, unlit segment, background) in BGR
LCD_COLOURS = (
    ((40, 45, 40), (150, 165, 150), (170, 185, 170)),  # grey-green reflective LCD
    ((50, 60, 20), (140, 200, 110), (150, 215, 120)),  # green backlight
    ((60, 40, 20), (200, 190, 110), (225, 210, 120)),  # cyan backlight
    ((30, 30, 30), (160, 160, 160), (190, 190, 190)),  # grey
)
LED_COLOURS = (
    ((60, 60, 255), (25, 25, 60), (15, 15, 20)),  # red LED
    ((120, 255, 120), (25, 50, 25), (15, 20, 15)),  # green LED
    ((255, 200, 120), (60, 40, 25), (20, 15, 15)),  # blue-white LED / VFD
    ((240, 240, 240), (60, 60, 60), (20, 20, 20)),  # white on black LCD (inverse backlight)
)
# segments a-g lit per digit (a top, b top right, c bottom right, d bottom, e bottom left,
# f top left, g middle)
SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}
# Roll positions (fraction of the way to the next digit) that count as the digit itself, and
# as "in transition"; positions between the two bands are ambiguous and never drawn.
SETTLED_ROLL = 0.12
FRAMED_SHARE = 0.35
TRANSITION_ROLL = (0.3, 0.7)


def drum_fonts(held_out=False):
    """TrueType files for drum digits: the training families, or FreeFont (held out)."""
    return fonts.find_fonts(fonts.HELD_OUT_FAMILIES if held_out else fonts.TRAINING_FAMILIES)


def _glyphs(font_path):
    return [fonts.render_glyph(font_path, digit, 64) for digit in range(10)]


def draw_drum(glyphs, digit, roll, rng):
    """BGR uint8 image of a drum window showing ``digit`` rolled ``roll`` of the way to the
    next one, and whether its ink is bright."""
    height = max(g.shape[0] for g in glyphs)
    width = max(g.shape[1] for g in glyphs)
    pitch = height * rng.uniform(1.25, 1.6)
    window_h = int(height * rng.uniform(1.1, 1.45))
    window_w = int(width * rng.uniform(1.15, 1.6))
    strip = np.zeros((window_h, window_w), np.float32)
    centre = window_h / 2.0 - roll * pitch  # the digit's centre moves up as the drum rolls
    for step in (-1, 0, 1, 2):
        glyph = glyphs[(digit + step) % 10]
        top = int(round(centre + step * pitch - glyph.shape[0] / 2.0))
        left = (window_w - glyph.shape[1]) // 2
        for y in range(glyph.shape[0]):
            row = top + y
            if 0 <= row < window_h:
                strip[row, left : left + glyph.shape[1]] = np.maximum(
                    strip[row, left : left + glyph.shape[1]], glyph[y]
                )
    ink, drum, face, bright = DRUM_COLOURS[int(rng.integers(0, len(DRUM_COLOURS)))]
    alpha = (strip / 255.0)[:, :, None]
    # the drum is a cylinder: darker towards the top and bottom of the window
    shade = 1.0 - rng.uniform(0.0, 0.35) * np.abs(np.linspace(-1, 1, window_h))[:, None, None] ** 2
    window = (np.array(drum, np.float32) * (1 - alpha) + np.array(ink, np.float32) * alpha) * shade
    # the box is usually drawn inside the window; sometimes a little of the frame shows
    framed = rng.random() < FRAMED_SHARE
    margin_x = int(window_w * rng.uniform(0.0, 0.12)) if framed else 0
    margin_y = int(window_h * rng.uniform(0.0, 0.08)) if framed else 0
    face_colour = np.array(face, np.float32) * rng.uniform(0.8, 1.2)
    image = np.empty((window_h + 2 * margin_y, window_w + 2 * margin_x, 3), np.float32)
    image[:] = face_colour
    image[margin_y : margin_y + window_h, margin_x : margin_x + window_w] = window
    return image, bright


def _segment_polygons(width, height, thick, gap):
    """Segment name -> polygon (float points) of an upright seven-segment digit."""
    half = thick / 2.0
    mid = height / 2.0
    horizontal = {"a": half, "g": mid, "d": height - half}
    vertical = {"f": (0, mid, 0), "b": (0, mid, width), "e": (mid, height, 0), "c": (mid, height, width)}
    polygons = {}
    for name, y in horizontal.items():
        x0, x1 = half + gap, width - half - gap
        polygons[name] = [
            (x0, y),
            (x0 + half, y - half),
            (x1 - half, y - half),
            (x1, y),
            (x1 - half, y + half),
            (x0 + half, y + half),
        ]
    for name, (y0, y1, x) in vertical.items():
        x = min(max(x, half), width - half)
        y0, y1 = y0 + half + gap, y1 - half - gap
        polygons[name] = [
            (x, y0),
            (x + half, y0 + half),
            (x + half, y1 - half),
            (x, y1),
            (x - half, y1 - half),
            (x - half, y0 + half),
        ]
    return polygons


def draw_segments(digit, rng):
    """BGR uint8 image of a seven-segment ``digit`` and whether its ink is bright."""
    height = 64.0
    width = height * rng.uniform(0.45, 0.65)
    thick = height * rng.uniform(0.08, 0.16)
    gap = rng.uniform(0.5, 2.5)
    lit = set(SEGMENTS[digit])
    if digit == 7 and rng.random() < 0.3:
        lit.add("f")
    if digit in (6, 9) and rng.random() < 0.3:
        lit.discard("a" if digit == 6 else "d")
    italic = rng.uniform(0.1, 0.22) if rng.random() < 0.5 else 0.0
    pad = 12
    canvas_lit = np.zeros((int(height) + 2 * pad, int(width + italic * height) + 2 * pad), np.uint8)
    canvas_unlit = np.zeros_like(canvas_lit)
    for name, points in _segment_polygons(width, height, thick, gap).items():
        shifted = [(x + pad + italic * (height - y), y + pad) for x, y in points]
        polygon = np.round(np.array(shifted) * 8).astype(np.int32)
        target = canvas_lit if name in lit else canvas_unlit
        cv2.fillPoly(target, [polygon], 255, cv2.LINE_AA, shift=3)
    led = rng.random() < 0.5
    palette = LED_COLOURS if led else LCD_COLOURS
    on, off, background = (np.array(c, np.float32) for c in palette[int(rng.integers(0, len(palette)))])
    contrast = rng.uniform(0.35, 1.0)
    on = background + (on - background) * contrast
    show_unlit = rng.random() < 0.5
    off = background + (off - background) * (rng.uniform(0.3, 1.0) if show_unlit else 0.0)
    lit_alpha = (canvas_lit / 255.0)[:, :, None]
    unlit_alpha = (canvas_unlit / 255.0)[:, :, None]
    image = background * (1 - lit_alpha - unlit_alpha) + on * lit_alpha + off * unlit_alpha
    return image, led


def photographed(image, rng):
    """A rendered BGR float image as a small camera crop (20-40 px tall, blurred, noisy, JPEG)."""
    target = rng.uniform(20, 40)
    scale = target / float(image.shape[0])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), rng.uniform(0.3, 1.1))
    small = small + rng.normal(0, rng.uniform(0.5, 6), small.shape)
    small = np.clip(small, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else small


def as_seen(crop, bright, rng=None):
    """The uint8 28x28 tensor the network gets for a crop whose box has its polarity set
    (the per-box ``polarity`` setting), or None when preprocessing finds it empty."""
    params = preprocess.PreprocessParams(polarity="light_on_dark" if bright else "dark_on_light")
    prepared = preprocess.prepare(crop, params)
    if prepared.empty:
        return None
    return np.round(prepared.tensor[:, :, 0] / preprocess.PIXEL_SCALE).astype(np.uint8)


def _drum_roll(label_kind, rng):
    if label_kind == "transition":
        return rng.uniform(*TRANSITION_ROLL)
    roll = rng.uniform(0.0, SETTLED_ROLL)
    return roll if rng.random() < 0.6 else -roll  # a digit sits a little high or a little low


def render_crops(count, rng, held_out=False, transition_share=0.2, segment_share=0.35):
    """``count`` meter crops: (BGR uint8 crops, labels, bright flags). Labels are 0-9 or
    ``TRANSITION_CLASS``; drum typefaces are FreeFont when ``held_out`` else the training ones."""
    font_files = drum_fonts(held_out)
    if not font_files:
        raise RuntimeError("no TrueType fonts for drum digits (make fonts train-fonts)")
    glyph_cache = {}
    crops, labels, brights = [], [], []
    for _ in range(count):
        kind = rng.random()
        if kind < segment_share:
            label = int(rng.integers(0, 10))
            image, bright = draw_segments(label, rng)
        else:
            path = font_files[int(rng.integers(0, len(font_files)))]
            if path not in glyph_cache:
                glyph_cache[path] = _glyphs(path)
            digit = int(rng.integers(0, 10))
            transition = kind > 1.0 - transition_share
            roll = _drum_roll("transition" if transition else "digit", rng)
            image, bright = draw_drum(glyph_cache[path], digit, roll, rng)
            label = TRANSITION_CLASS if transition else digit
        crops.append(photographed(image, rng))
        labels.append(label)
        brights.append(bright)
    return crops, labels, brights


def render_meter_digits(count, rng, held_out=False):
    """uint8 images [N,28,28] framed by daemon.preprocess and their labels (0-9 or
    ``TRANSITION_CLASS``); crops preprocessing calls empty are left out."""
    crops, labels, brights = render_crops(count, rng, held_out)
    images, kept = [], []
    for crop, label, bright in zip(crops, labels, brights):
        seen = as_seen(crop, bright)
        if seen is not None:
            images.append(seen)
            kept.append(label)
    size = preprocess.INPUT_SIZE
    return np.array(images, np.uint8).reshape(-1, size, size), np.array(kept, np.uint8)


def main(argv=None):
    """Write sample crops to a folder (to look at what training sees)."""
    parser = argparse.ArgumentParser(description="Write sample meter-digit crops as PNG files.")
    parser.add_argument("--output", default="/tmp/meter-digits")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    import os

    os.makedirs(args.output, exist_ok=True)
    crops, labels, _ = render_crops(args.count, np.random.default_rng(args.seed), args.held_out)
    for index, (crop, label) in enumerate(zip(crops, labels)):
        cv2.imwrite(os.path.join(args.output, "%03d_%s.png" % (index, label)), crop)
    print("wrote %d crops to %s" % (len(crops), args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def drum_rolls(position, count):
    """(digit, roll) per drum, most significant first, of a counter at ``position`` (in units
    of its last drum, e.g. 1234.4: the last drum 40 % of the way from 4 to 5). As in a real
    counter only the last drum turns all the time; a drum above rolls with it while every
    drum below it shows 9."""
    whole = int(np.floor(position))
    fraction = position - whole
    drums = []
    for power in range(count - 1, -1, -1):
        digit = (whole // 10**power) % 10
        below = whole % 10**power
        rolling = below == 10**power - 1 if power else True
        drums.append((digit, fraction if rolling else 0.0))
    return drums


def counter_frame(position, glyphs, count=6, size=(640, 360), origin=(150, 140), digit_height=44, red_last=0):
    """A BGR frame of a meter face with ``count`` white-on-black drums (the last ``red_last``
    white on red) at counter ``position``; returns (frame, boxes as (x, y, w, h))."""
    width, height = size
    frame = np.full((height, width, 3), (200, 205, 210), np.uint8)
    cv2.rectangle(
        frame,
        (origin[0] - 20, origin[1] - 20),
        (origin[0] + count * 56 + 20, origin[1] + 90),
        (90, 90, 95),
        -1,
    )
    boxes = []
    glyph_height = max(g.shape[0] for g in glyphs)
    scale = digit_height / float(glyph_height)
    small = [cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for g in glyphs]
    for index, (digit, roll) in enumerate(drum_rolls(position, count)):
        pitch = digit_height * 1.4
        window_w, window_h = int(digit_height * 0.9), int(digit_height * 1.25)
        strip = np.zeros((window_h, window_w), np.float32)
        centre = window_h / 2.0 - roll * pitch
        for step in (-1, 0, 1, 2):
            glyph = small[(digit + step) % 10]
            top = int(round(centre + step * pitch - glyph.shape[0] / 2.0))
            left = (window_w - glyph.shape[1]) // 2
            y0, y1 = max(0, top), min(window_h, top + glyph.shape[0])
            if y1 > y0:
                part = glyph[y0 - top : y1 - top]
                region = strip[y0:y1, left : left + glyph.shape[1]]
                np.maximum(region, part, out=region)
        red = index >= count - red_last
        drum = np.array((30, 30, 170) if red else (25, 25, 25), np.float32)
        alpha = (strip / 255.0)[:, :, None]
        window = drum * (1 - alpha) + np.array((235, 235, 235), np.float32) * alpha
        x, y = origin[0] + index * 56, origin[1]
        frame[y : y + window_h, x : x + window_w] = np.clip(window, 0, 255).astype(np.uint8)
        boxes.append((x, y, window_w, window_h))
    return frame, boxes
