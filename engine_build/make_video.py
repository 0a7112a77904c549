"""Generate a deterministic test video: MNIST test digits written on paper-like frames.

    python -m engine_build.make_video --output samples/demo.mp4 --digits 40

Each digit is shown for ``--frames-per-digit`` frames, dark ink on a lit sheet of
paper (gradient, grain, slight jitter and blur), with an empty sheet every
``--blank-every`` digits. ``<output>.labels.json`` holds the truth per frame
(null for an empty sheet) and the box of each ROI.
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from engine_build import mnist


def paper(rng, width, height):
    """A light sheet with a lighting gradient and grain, uint8 gray."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(15, 35)
    base = rng.uniform(190, 225) + gradient - gradient.mean()
    grain = cv2.GaussianBlur(rng.normal(0, 6, (height, width)).astype(np.float32), (3, 3), 0)
    return np.clip(base + grain, 0, 255)


def ink_digit(sheet, digit28, centre, size, rng, darkness=0.8):
    """Write a MNIST digit (bright on dark) as dark ink of ``size`` pixels onto ``sheet``."""
    scaled = cv2.resize(digit28, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    alpha = np.clip(scaled / 255.0, 0, 1) * darkness
    x0, y0 = int(centre[0] - size // 2), int(centre[1] - size // 2)
    region = sheet[y0 : y0 + size, x0 : x0 + size]
    ink_level = rng.uniform(20, 60)
    region[:] = region * (1 - alpha) + ink_level * alpha
    return (x0, y0, size, size)


def render_frames(images, labels, args):
    """Yield (bgr_frame, truth) for the whole video."""
    rng = np.random.default_rng(args.seed)
    width, height = args.width, args.height
    for position, (image, label) in enumerate(zip(images, labels)):
        blank = args.blank_every and position % args.blank_every == args.blank_every - 1
        sheet = paper(rng, width, height)
        size = int(min(width, height) * rng.uniform(0.22, 0.3))
        if not blank:
            ink_digit(sheet, image, (width // 2, height // 2), size, rng)
        for _ in range(args.frames_per_digit):
            jitter = rng.normal(0, 1.5, 2)
            matrix = np.float32([[1, 0, jitter[0]], [0, 1, jitter[1]]])
            frame = cv2.warpAffine(sheet, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
            frame = frame + rng.normal(0, 3, frame.shape)
            frame = cv2.GaussianBlur(np.clip(frame, 0, 255).astype(np.uint8), (3, 3), 0.8)
            tint = np.array([rng.uniform(0.95, 1.0), 1.0, rng.uniform(0.95, 1.05)])
            bgr = np.clip(frame[:, :, None] * tint, 0, 255).astype(np.uint8)
            yield bgr, None if blank else int(label)


def write_video(path, frames, fps, width, height):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write %s with codec mp4v" % path)
    truth = []
    for frame, label in frames:
        writer.write(frame)
        truth.append(label)
    writer.release()
    return truth


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="samples/demo.mp4")
    parser.add_argument("--digits", type=int, default=40)
    parser.add_argument("--frames-per-digit", type=int, default=6)
    parser.add_argument("--blank-every", type=int, default=10, help="0 = never")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", default=None)
    return parser.parse_args(argv)


def main(args):
    """Write the video and its labels; returns 0."""
    images, labels = mnist.load_split("test", args.data_dir)
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(images), size=args.digits, replace=False)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    truth = write_video(
        output, render_frames(images[chosen], labels[chosen], args), args.fps, args.width, args.height
    )
    meta = {
        "video": output.name,
        "width": args.width,
        "height": args.height,
        "fps": args.fps,
        "frames": len(truth),
        "mnist_test_indices": [int(i) for i in chosen],
        "truth": truth,
        "seed": args.seed,
    }
    Path(str(output) + ".labels.json").write_text(json.dumps(meta) + "\n")
    print("wrote %s (%d frames, %d digits) and its labels" % (output, len(truth), args.digits))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
