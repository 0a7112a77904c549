"""Videos for the pipeline benchmarks in which every ROI holds a digit and the truth is known.

Two layouts, both at 30 fps, MNIST test digits as dark ink on light paper, a new set of
digits every ``FRAMES_PER_DIGIT`` frames:

- centre: one digit of ``CENTRE_DIGIT_PX`` pixels in the middle of the frame, whatever the
  frame size (the frame-size series then grows the frame, not the digit);
- boxes: the frame tiled with N boxes (``bench.probe.box_grid``), each with its own digit.

``<video>.truth.json`` beside each video holds the number the daemon should publish for
every frame (frame indices count from 1, as the daemon's ``frame`` field does).
"""

import json
from pathlib import Path

import cv2
import numpy as np

from bench.probe import box_grid

ROOT = Path(__file__).resolve().parent.parent
VIDEOS = ROOT / "bench" / "results" / "videos"
FPS = 30.0
FRAMES_PER_DIGIT = 6
CENTRE_DIGIT_PX = 120  # inside the daemon's default 200 px centre square
PAPER = 215


def truth_path(video):
    return Path(str(video) + ".truth.json")


def load_truth(video):
    """{frame index: expected number}."""
    numbers = json.loads(truth_path(video).read_text())["numbers"]
    return {index + 1: number for index, number in enumerate(numbers)}


def draw_frame(width, height, boxes, glyphs):
    """One grey frame: ``glyphs`` (28x28 MNIST images) one per box, or one centred if no boxes."""
    from tests.synthetic import paper_crop

    frame = np.full((height, width), PAPER, np.uint8)
    if not boxes:
        side = CENTRE_DIGIT_PX * 5 // 3
        crop = paper_crop(glyphs[0], size=side, paper=PAPER, digit_size=CENTRE_DIGIT_PX)
        y, x = (height - side) // 2, (width - side) // 2
        frame[y : y + side, x : x + side] = crop
        return frame
    for box, glyph in zip(boxes, glyphs):
        side = min(box["w"], box["h"])
        crop = paper_crop(glyph, size=side, paper=PAPER, digit_size=int(side * 0.7))
        y = box["y"] + (box["h"] - side) // 2
        x = box["x"] + (box["w"] - side) // 2
        frame[y : y + side, x : x + side] = crop
    return frame


def digit_video(width, height, frames, boxes=0):
    """Path of a cached video (made on first use) with ``frames`` frames; ``boxes`` 0 = centre."""
    from engine_build import mnist

    VIDEOS.mkdir(parents=True, exist_ok=True)
    layout = "boxes%d" % boxes if boxes else "centre%dpx" % CENTRE_DIGIT_PX
    path = VIDEOS / ("checked_%dx%d_%s_%d.mp4" % (width, height, layout, frames))
    if path.exists() and truth_path(path).exists():
        return path
    images, labels = mnist.load_split("test")
    grid = box_grid(boxes, width, height) if boxes else []
    per_frame = max(1, len(grid))
    rng = np.random.default_rng(width * 7919 + height * 31 + boxes)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    numbers = []
    try:
        for start in range(0, frames, FRAMES_PER_DIGIT):
            picks = rng.integers(0, len(images), per_frame)
            image = cv2.cvtColor(draw_frame(width, height, grid, images[picks]), cv2.COLOR_GRAY2BGR)
            number = "".join(str(labels[k]) for k in picks)
            for _ in range(min(FRAMES_PER_DIGIT, frames - start)):
                writer.write(image)
                numbers.append(number)
    finally:
        writer.release()
    truth_path(path).write_text(json.dumps({"boxes": grid, "numbers": numbers}))
    return path
