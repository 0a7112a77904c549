"""CPU cost per frame of each ROI mode, in this process, with every ROI holding a digit and
every reading checked (``make bench`` runs it; ``python -m bench.modes`` alone).

A camera's frames (1280x720, sensor noise on each) go through the daemon's own reader:
prepare (ROIs, crops, tensors) and one inference call per frame, as the pipeline does, with
the daemon's thread settings (OpenCV and ONNX Runtime: one thread). Modes are interleaved
frame by frame, so a busy moment of this shared machine does not land on one mode; each
mode's figure is the median over its frames.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from daemon import config
from daemon.reader import Reader

FRAME = (1280, 720)
# the small network (seed-001 sized), measured beside digitnet when it is there
SMALL_NETWORK = Path(__file__).resolve().parent.parent / "models" / "small.onnx"


def noisy(image, seed):
    """The same scene as a camera sees it again: a little sensor noise."""
    noise = np.random.default_rng(seed).normal(0, 2.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def on_frame(sheet):
    """``sheet`` (grey) scaled to fit a 1280x720 frame of paper, centred."""
    if sheet.ndim == 3:
        sheet = cv2.cvtColor(sheet, cv2.COLOR_BGR2GRAY)
    width, height = FRAME
    scale = min(width / float(sheet.shape[1]), height / float(sheet.shape[0]), 1.0)
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else sheet
    frame = np.full((height, width), int(np.median(sheet)), np.uint8)
    y, x = (height - sheet.shape[0]) // 2, (width - sheet.shape[1]) // 2
    frame[y : y + sheet.shape[0], x : x + sheet.shape[1]] = sheet
    return frame


def scenes(images, labels, font_paths):
    """{mode: (frame, roi settings, how to check a reading)}."""
    from tests import synthetic

    rng = np.random.default_rng(17)
    out = {}
    digit = on_frame(synthetic.paper_crop(images[0], size=300, digit_size=200))
    out["center"] = (digit, {"mode": "center", "size": 300}, lambda r: r["number"] == str(labels[0]))
    # 16 boxes, each around a digit (a meter panel, a form): 4 x 4 over the frame
    frame = np.full(FRAME[::-1], 215, np.uint8)
    boxes, truth = [], ""
    for k in range(16):
        x, y = 80 + (k % 4) * 300, 40 + (k // 4) * 170
        frame[y : y + 150, x : x + 150] = synthetic.paper_crop(images[k + 1], size=150, digit_size=100)
        boxes.append({"id": "b%d" % k, "x": x, "y": y, "w": 150, "h": 150})
        truth += str(labels[k + 1])
    out["boxes16"] = (frame, {"mode": "boxes", "boxes": boxes}, lambda r: r["number"] == truth)
    number, text = synthetic.number_image(rng, images, labels)
    out["segment"] = (on_frame(number), {"mode": "segment"}, lambda r: r["number"] == text)
    sudoku, cells = synthetic.sudoku_image(rng, images, labels, font_paths)
    out["grid"] = (on_frame(sudoku), {"mode": "grid"}, lambda r: r.get("grid") == cells)
    return out


def measure(frames_per_mode=60):
    """{mode: {cpu_ms_per_frame, prepare_ms_per_frame, frames, read_right}} with the modes
    interleaved. ``prepare`` is ROI, crops and tensors (the capture thread's share); the rest
    of ``cpu_ms_per_frame`` is ONNX Runtime inference and the readings."""
    from engine_build import fonts, mnist

    images, labels = mnist.load_split("test")
    cv2.setNumThreads(1)
    font_paths = fonts.find_fonts(fonts.HELD_OUT_FAMILIES) or ()
    networks = {"": str(SMALL_NETWORK.parent / "digits.onnx")}
    if SMALL_NETWORK.exists():
        networks[", small network"] = str(SMALL_NETWORK)
    readers, checks, frames, times, prepare_times, right = {}, {}, {}, {}, {}, {}
    backends = []
    for suffix, onnx_model in networks.items():
        base = {
            "source": {"type": "images", "path": "."},
            "backend": {"type": "onnxruntime", "threads": 1, "onnx_model": onnx_model},
        }
        backend = None
        for scene, (frame, roi_settings, check) in scenes(images, labels, font_paths).items():
            mode = scene + suffix
            settings = config.from_dict(dict(base, roi=roi_settings))
            readers[mode] = Reader.from_config(settings, backend)
            backend = readers[mode].backend
            checks[mode], frames[mode], times[mode], prepare_times[mode], right[mode] = (
                check,
                frame,
                [],
                [],
                0,
            )
        backends.append(backend)
    for index in range(frames_per_mode):
        for mode, reader in readers.items():
            image = noisy(frames[mode], index)
            started = time.process_time()
            prepared = reader.prepare(image)
            prepare_times[mode].append(time.process_time() - started)
            readings = reader.readings(prepared, reader.infer(prepared.prepared))
            times[mode].append(time.process_time() - started)
            right[mode] += bool(checks[mode](Reader.frame_payload(readings)))
    for backend in backends:
        backend.close()
    return {
        mode: {
            "cpu_ms_per_frame": round(1000.0 * float(np.median(times[mode][1:])), 2),
            "prepare_ms_per_frame": round(1000.0 * float(np.median(prepare_times[mode][1:])), 2),
            "first_frame_ms": round(1000.0 * times[mode][0], 1),
            "frames": frames_per_mode,
            "read_right": right[mode],
        }
        for mode in readers
    }


def markdown(rows):
    lines = [
        "| mode (1280x720, every ROI a digit) | CPU ms per frame (median) | of which prepare ms "
        "| first frame ms | frames read right |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, row in rows.items():
        lines.append(
            "| %s | %.2f | %.2f | %.1f | %d / %d |"
            % (
                mode,
                row["cpu_ms_per_frame"],
                row["prepare_ms_per_frame"],
                row["first_frame_ms"],
                row["read_right"],
                row["frames"],
            )
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per mode")
    args = parser.parse_args(argv)
    rows = measure(args.frames)
    print(json.dumps(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
