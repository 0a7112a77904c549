"""Marks that are not digits, for the classifier's reject class ("not a digit").

Real photos put ruled lines, dashes, the corners and crossings of grid lines, box
outlines, shadows, blobs and paper texture where a digit could be. Without a class for
them the network must call each one a digit (lines read as 1 and 7, blobs as 8). These
marks are drawn dark on a lit sheet, sometimes photographed small like
``fonts.camera``, and go through ``daemon.preprocess`` exactly as at run time.

A single straight stroke near vertical is left out on purpose: that is how a 1 is written.

Two handwritten digits that touch are not one digit either: squeezed into one 28x28
frame the network would read the pair, confidently, as some digit, and the segment mode
would keep it whole. Called "not a digit", the pair is split and its halves are read.
"""

import cv2
import numpy as np

from daemon import preprocess
from engine_build import fonts

KINDS = ("dash", "corner", "cross", "frame", "blob", "texture", "oblique", "dots")


def _line(canvas, start, end, thickness):
    cv2.line(
        canvas, tuple(int(v) for v in start), tuple(int(v) for v in end), 255, int(thickness), cv2.LINE_AA
    )


def draw_mark(kind, side, rng):
    """A bright-on-dark uint8 mask of one mark of ``kind`` on a ``side`` px square."""
    canvas = np.zeros((side, side), np.uint8)
    thick = max(1, int(side * rng.uniform(0.02, 0.12)))
    centre = side / 2.0
    if kind == "dash":
        length = side * rng.uniform(0.25, 1.0)
        angle = np.deg2rad(rng.uniform(-12, 12))
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        y = centre + rng.uniform(-0.35, 0.35) * side
        x = centre + rng.uniform(-0.2, 0.2) * side
        _line(canvas, (x - dx, y - dy), (x + dx, y + dy), thick)
    elif kind == "corner":
        # the corner of a box or grid: two arms at a right angle. A bar with an arm going down
        # from its right end is how a seven-segment 7 looks, so that one is never drawn.
        horizontal, vertical = rng.choice([(1, 1), (1, -1), (-1, -1)])
        x, y = rng.uniform(0.15, 0.85, 2) * side
        arms = rng.uniform(0.35, 0.9, 2) * side
        _line(canvas, (x, y), (x + horizontal * arms[0], y), thick)
        _line(canvas, (x, y), (x, y + vertical * arms[1]), thick)
    elif kind == "cross":
        x, y = rng.uniform(0.25, 0.75, 2) * side
        _line(canvas, (0, y), (side, y), thick)
        _line(canvas, (x, 0), (x, side), thick)
    elif kind == "frame":
        # wider than tall: a box drawn as tall as wide reads, rightly, as a 0
        width = side * rng.uniform(0.7, 1.0)
        height = width / rng.uniform(1.4, 3.0)
        left, top = (side - width) / 2.0, (side - height) / 2.0
        cv2.rectangle(canvas, (int(left), int(top)), (int(left + width), int(top + height)), 255, thick)
    elif kind == "blob":
        axes = (int(side * rng.uniform(0.15, 0.45)), int(side * rng.uniform(0.15, 0.45)))
        cv2.ellipse(canvas, (int(centre), int(centre)), axes, rng.uniform(0, 180), 0, 360, 255, -1)
    elif kind == "texture":
        canvas = (rng.random((side, side)) < rng.uniform(0.05, 0.3)).astype(np.uint8) * 255
        canvas = cv2.GaussianBlur(canvas, (3, 3), 0)
    elif kind == "oblique":
        angle = np.deg2rad(rng.choice([-1, 1]) * rng.uniform(30, 70))  # from vertical; a 1 leans less
        dx, dy = np.sin(angle) * side, np.cos(angle) * side
        _line(canvas, (centre - dx, centre - dy), (centre + dx, centre + dy), thick)
    elif kind == "dots":
        for _ in range(int(rng.integers(2, 6))):
            point = (int(rng.uniform(0.1, 0.9) * side), int(rng.uniform(0.1, 0.9) * side))
            cv2.circle(canvas, point, max(1, thick), 255, -1)
    else:
        raise ValueError("unknown mark kind %r" % kind)
    return canvas


def render_marks(count, rng):
    """uint8 images [count, 28, 28], ink bright, framed by daemon.preprocess like digits."""
    images = []
    attempts = 0
    while len(images) < count and attempts < count * 5:
        attempts += 1
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        side = int(rng.integers(40, 90))
        mark = draw_mark(kind, side, rng)
        paper = np.full((side, side), rng.uniform(150, 230), np.float32)
        paper += np.linspace(-1, 1, side)[None, :] * rng.uniform(0, 20)
        alpha = mark.astype(np.float32) / 255.0 * rng.uniform(0.5, 0.95)
        paper = paper * (1 - alpha) + rng.uniform(20, 90) * alpha
        seen = fonts.as_the_daemon_sees(paper, side, rng)
        if seen is not None:
            images.append(seen)
    return np.array(images, np.uint8).reshape(-1, preprocess.INPUT_SIZE, preprocess.INPUT_SIZE)


def render_touching_pairs(count, images, rng):
    """uint8 images [count, 28, 28]: two MNIST digits (from ``images``, the training split)
    touching or overlapping side by side, framed like one digit."""
    pairs = []
    for _ in range(count):
        left, right = (images[i] for i in rng.integers(0, len(images), 2))
        glyphs = []
        for image in (left, right):
            x, y, w, h = cv2.boundingRect(image)
            glyphs.append(image[y : y + h, x : x + w])
        height = max(g.shape[0] for g in glyphs)
        overlap = int(rng.integers(0, 4))
        width = glyphs[0].shape[1] + glyphs[1].shape[1] - overlap
        canvas = np.zeros((height + 4, width + 4), np.uint8)
        x = 2
        for glyph in glyphs:
            top = 2 + int(rng.integers(0, height - glyph.shape[0] + 1))
            region = canvas[top : top + glyph.shape[0], x : x + glyph.shape[1]]
            np.maximum(region, glyph, out=region)
            x += glyph.shape[1] - overlap
        pairs.append(preprocess.fit_digit(canvas))
    return np.array(pairs, np.uint8).reshape(-1, preprocess.INPUT_SIZE, preprocess.INPUT_SIZE)
