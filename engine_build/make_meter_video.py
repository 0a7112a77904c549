"""Generate a sample meter video: a water meter's counter climbing, drums rolling.

    python -m engine_build.make_meter_video            # samples/meter.mp4 (+ .labels.json, -reference.png, .yaml)

Six drums (the last two red, decimals 2) in a typeface training never saw (FreeSans Bold),
white on black; the last drum turns all the time and carries over into the ones above
it, so many frames show drums caught between two digits. The camera shakes a little and,
half-way, is knocked ``--knock-px`` pixels to the side and stays there: the boxes are
drawn on the saved reference frame, and alignment (roi.align) must find them again.

Writes the video, its labels (the counter's value per frame), the reference frame and a
config (samples/meter.yaml) that reads it with roi.meter and roi.align.
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from engine_build import fonts, meter_digits

FONT = "FreeSansBold"
DRUMS = 6
DECIMALS = 2


def glyphs_of(family=FONT):
    paths = [p for p in fonts.find_fonts((family,)) if Path(p).stem == family]
    if not paths:
        raise RuntimeError("font %s not found (make fonts installs fonts-freefont-ttf)" % family)
    return [fonts.render_glyph(paths[0], digit) for digit in range(10)]


def camera(frame, shift, rng):
    """The frame as a camera sees it: shifted, slightly blurred and noisy."""
    height, width = frame.shape[:2]
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(frame, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    noisy = cv2.GaussianBlur(moved, (3, 3), 0.7).astype(np.float32) + rng.normal(0, 3, moved.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main(args):
    rng = np.random.default_rng(args.seed)
    glyphs = glyphs_of()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    reference, boxes = meter_digits.counter_frame(args.start, glyphs, count=DRUMS, red_last=DECIMALS)
    reference_path = output.with_name(output.stem + "-reference.png")
    cv2.imwrite(str(reference_path), reference)
    height, width = reference.shape[:2]
    writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write %s with codec mp4v" % output)
    truth = []
    for index in range(args.frames):
        position = args.start + index * args.step
        frame, _ = meter_digits.counter_frame(position, glyphs, count=DRUMS, red_last=DECIMALS)
        knocked = index >= args.frames // 2
        shift = rng.normal(0, 1.0, 2) + ((args.knock_px, args.knock_px // 3) if knocked else (0, 0))
        writer.write(camera(frame, shift, rng))
        truth.append(round(np.floor(position + 1e-9) / 10**DECIMALS, DECIMALS))
    writer.release()
    labels = {
        "truth": truth,
        "start": args.start,
        "step_per_frame": args.step,
        "decimals": DECIMALS,
        "knocked_from_frame": args.frames // 2 + 1,
        "knock_px": args.knock_px,
    }
    Path(str(output) + ".labels.json").write_text(json.dumps(labels) + "\n")
    config = {
        "device_id": "meter-demo",
        # paced like a camera, so the meter's rate check sees the video's own time
        "source": {"type": "file", "path": str(output), "realtime": True, "fps": args.fps},
        "roi": {
            "mode": "boxes",
            "boxes": [
                {"id": "d%d" % i, "x": x, "y": y, "w": w, "h": h, "polarity": "light_on_dark"}
                for i, (x, y, w, h) in enumerate(boxes)
            ],
            "align": {"reference": str(reference_path)},
            "meter": {
                "enabled": True,
                "decimals": DECIMALS,
                "max_rate": round(2 * args.step * args.fps * 3600 / 10**DECIMALS, 1),
                "device_class": "water",
            },
        },
        "postprocess": {"smoothing_frames": 1},
        "mqtt": {"homeassistant": True},
    }
    config_path = output.with_suffix(".yaml")
    config_path.write_text(
        "# The sample meter video (engine_build/make_meter_video.py): python -m daemon run -c %s\n"
        "# (meter.state_file defaults to $STATE_DIRECTORY/meter.json; set one to keep it elsewhere)\n"
        % config_path
        + yaml.safe_dump(config, sort_keys=False)
    )
    print("wrote %s (%d frames), %s, %s" % (output, args.frames, reference_path, config_path))
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="samples/meter.mp4")
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--start", type=float, default=472985.0, help="counter position, last-drum units")
    parser.add_argument("--step", type=float, default=0.1, help="last-drum units per frame")
    parser.add_argument("--knock-px", type=int, default=20)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=11)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
