"""Accuracy on real phone photos of newspaper sudokus (``make eval-real``).

    python -m engine_build.eval_real                       # ../shared/data/sudoku-photos
    python -m engine_build.eval_real --data DIR --limit 40 --failures docs/failures/real

Each photo goes through ``daemon.predict`` exactly as ``predict --roi grid`` reads it.
``--blur``, ``--scale``, ``--light``, ``--shadow``, ``--noise``, ``--turn`` and ``--jpeg``
read harder copies of the same photos (defocused, smaller, dim, half in a shadow, grainy,
turned, more compressed): how far the reading holds beyond the photos it was tuned on.
Prints grids located (the found outer frame against ``outlines.csv``), grids read
exactly, cells right, digits right and empty cells right; writes ``real.json`` and the
worst failures as images (wrong cells in red, "read/true") into ``--failures``.

The photos are the development split of B. Wicht and J. Hennebert's Sudoku Dataset v2
(CC-BY-4.0). Their labels follow the stored pixels, not the EXIF orientation flag.
"""

import argparse
import csv
import json
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from daemon import predict
from engine_build import run_main

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sudoku-photos"
# A grid counts as located when every found corner lies within this share of the true
# grid's side from the true corner (5 % of a 9-cell side is under half a cell).
LOCATED_TOLERANCE = 0.05


class Photo(object):
    """One labelled photo: path, 9x9 digits (0 = empty), true corners or None."""

    def __init__(self, path, digits, corners):
        self.path = path
        self.digits = digits
        self.corners = corners


def read_labels(path):
    """The 9x9 digits of a ``.dat`` file (two header lines, then 9 rows of 9)."""
    lines = [line.split() for line in Path(path).read_text().splitlines()[2:] if line.strip()]
    digits = np.array(lines[:9], dtype=np.int64)
    if digits.shape != (9, 9):
        raise ValueError("%s: expected 9 rows of 9 digits, got shape %s" % (path, digits.shape))
    return digits


def load_photos(data_dir, limit=None):
    """The labelled photos of ``data_dir`` in a stable order (sorted by number)."""
    data_dir = Path(data_dir)
    if not (data_dir / "train").is_dir():
        raise FileNotFoundError("no train/ folder in %s (the sudoku-photos data set)" % data_dir)
    outlines = {}
    with open(str(data_dir / "outlines.csv")) as handle:
        for row in csv.DictReader(handle):
            points = [float(row["p%d_%s" % (i, axis)]) for i in range(1, 5) for axis in "xy"]
            outlines[Path(row["filepath"]).name] = np.array(points, np.float32).reshape(4, 2)
    paths = sorted((data_dir / "train").glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))
    photos = [Photo(p, read_labels(p.with_suffix(".dat")), outlines.get(p.name)) for p in paths]
    return photos[:limit] if limit else photos


def located(found, truth, tolerance=LOCATED_TOLERANCE):
    """Whether found corners (4x2, clockwise from top-left) match the true ones."""
    if found is None or truth is None:
        return False
    side = np.mean([np.linalg.norm(truth[i] - truth[(i + 1) % 4]) for i in range(4)])
    found = np.asarray(found, np.float32).reshape(4, 2)
    return bool(np.max(np.linalg.norm(found - truth, axis=1)) <= tolerance * side)


def grid_array(result):
    """The predict result's grid as 9x9 ints (0 = empty)."""
    grid = result.get("grid") or [[None] * 9] * 9
    return np.array([[0 if v is None else v for v in row] for row in grid], np.int64)


def score(photo, result):
    """Per-photo figures from a predict result."""
    read = grid_array(result)
    truth = photo.digits
    filled = truth > 0
    return {
        "file": photo.path.name,
        "located": located(result.get("outline"), photo.corners),
        "has_outline": photo.corners is not None,
        "exact": bool((read == truth).all()),
        "cells_right": int((read == truth).sum()),
        "digits": int(filled.sum()),
        "digits_right": int((read == truth)[filled].sum()),
        "empty": int((~filled).sum()),
        "empty_right": int((read == truth)[~filled].sum()),
        "read": read.tolist(),
    }


def summarise(scores):
    """Totals over all photos."""
    total = len(scores)
    cells = 81 * total
    digits = sum(s["digits"] for s in scores)
    empty = sum(s["empty"] for s in scores)
    with_outline = [s for s in scores if s["has_outline"]]
    return {
        "photos": total,
        "grids_located": sum(s["located"] for s in with_outline),
        "grids_with_outline": len(with_outline),
        "grids_exact": sum(s["exact"] for s in scores),
        "cells_right": sum(s["cells_right"] for s in scores),
        "cells": cells,
        "digits_right": sum(s["digits_right"] for s in scores),
        "digits": digits,
        "empty_right": sum(s["empty_right"] for s in scores),
        "empty": empty,
    }


def report(summary):
    """The summary as a few human lines."""

    def share(part, whole):
        return "%d / %d = %.2f %%" % (part, whole, 100.0 * part / max(whole, 1))

    return "\n".join(
        [
            "photos           %d" % summary["photos"],
            "grids located    %s" % share(summary["grids_located"], summary["grids_with_outline"]),
            "grids exact      %s" % share(summary["grids_exact"], summary["photos"]),
            "cells right      %s" % share(summary["cells_right"], summary["cells"]),
            "digits right     %s" % share(summary["digits_right"], summary["digits"]),
            "empty right      %s" % share(summary["empty_right"], summary["empty"]),
        ]
    )


def cell_box(outline, row, col):
    """Box (x, y, w, h) of cell (row, col) inside a found outline, or None without one."""
    if outline is None:
        return None
    square = np.float32([[0, 0], [9, 0], [9, 9], [0, 9]])
    warp = cv2.getPerspectiveTransform(square, np.float32(outline))
    corners = cv2.perspectiveTransform(np.float32([[[col, row]], [[col + 1, row + 1]]]), warp).reshape(2, 2)
    (x0, y0), (x1, y1) = corners
    return (x0, y0, x1 - x0, y1 - y0)


def failure_image(photo, result, scored, width=640):
    """The photo with the true outline (green), the found one (blue) and wrong cells (red)."""
    image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    scale = float(width) / image.shape[1]
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if photo.corners is not None:
        cv2.polylines(image, [np.int32(photo.corners * scale)], True, (0, 170, 0), 2)
    if result.get("outline") is not None:
        cv2.polylines(image, [np.int32(np.float32(result["outline"]) * scale)], True, (200, 80, 0), 2)
    boxes = {tuple(d["cell"]): d["box"] for d in result.get("digits", []) if "cell" in d}
    read = np.array(scored["read"])
    for row, col in zip(*np.nonzero(read != photo.digits)):
        caption = "%s/%s" % (read[row, col] or "-", photo.digits[row, col] or "-")
        box = boxes.get((row, col)) or cell_box(result.get("outline"), row, col)
        if box is None:
            continue
        x, y, w, h = [int(v * scale) for v in box]
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 0, 230), 2)
        cv2.putText(image, caption, (x, y + h + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 230), 2)
    label = "%s: %d/81 cells right%s  (red: read/true; outline green: true, blue: found)" % (
        photo.path.name,
        scored["cells_right"],
        "" if scored["located"] else ", grid NOT located",
    )
    canvas = cv2.copyMakeBorder(image, 0, 30, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    cv2.putText(canvas, label, (6, canvas.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 200), 1)
    return canvas


def write_failures(out_dir, photos, results, scores, count, image_format="jpg"):
    """The ``count`` worst photos (fewest cells right) as annotated images (photos: JPEG by
    default, PNG on request)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("*.png")) + list(out_dir.glob("*.jpg")):
        old.unlink()
    order = sorted(range(len(scores)), key=lambda i: (scores[i]["cells_right"], scores[i]["file"]))
    written = []
    for index in [i for i in order if not scores[i]["exact"]][:count]:
        target = out_dir / ("%02d_%s.%s" % (len(written), photos[index].path.stem, image_format))
        cv2.imwrite(
            str(target),
            failure_image(photos[index], results[index], scores[index]),
            [cv2.IMWRITE_JPEG_QUALITY, 85],
        )
        written.append(target)
    return written


class Degradation(object):
    """A harder copy of a photo: Gaussian blur of ``blur`` pixels (sigma), resized by
    ``scale``; its light times ``light`` (a dim room or a short exposure); a shadow's edge
    across the page, darker by the fraction ``shadow`` on one side; sensor noise of
    ``noise`` grey levels (sigma); turned by ``turn`` degrees (counter-clockwise, on a canvas
    grown to hold all of it, the rest the photo's median colour); then saved as a JPEG of
    ``quality`` (None: none of these).
    The shadow's direction and the noise are drawn from the photo's own pixels, so a copy
    is the same on every run."""

    def __init__(self, blur=0.0, scale=1.0, quality=None, light=1.0, shadow=0.0, noise=0.0, turn=0.0):
        if (
            blur < 0
            or not 0 < scale <= 1
            or (quality is not None and not 1 <= quality <= 100)
            or not 0 < light <= 1
            or not 0 <= shadow < 1
            or noise < 0
        ):
            raise ValueError(
                "want blur >= 0, 0 < scale <= 1, JPEG quality 1-100, 0 < light <= 1, "
                "0 <= shadow < 1 and noise >= 0, got %s, %s, %s, %s, %s, %s"
                % (blur, scale, quality, light, shadow, noise)
            )
        self.blur, self.scale, self.quality = blur, scale, quality
        self.light, self.shadow, self.noise, self.turn = light, shadow, noise, turn

    def __bool__(self):
        return bool(
            self.blur
            or self.scale != 1.0
            or self.quality is not None
            or self.light != 1.0
            or self.shadow
            or self.noise
            or self.turn
        )

    def describe(self):
        parts = ["blur %.1f px" % self.blur] if self.blur else []
        parts += ["scale %.2f" % self.scale] if self.scale != 1.0 else []
        parts += ["light x %.2f" % self.light] if self.light != 1.0 else []
        parts += ["shadow %.2f" % self.shadow] if self.shadow else []
        parts += ["noise %.1f" % self.noise] if self.noise else []
        parts += ["turned %g degrees" % self.turn] if self.turn else []
        parts += ["JPEG quality %d" % self.quality] if self.quality is not None else []
        return ", ".join(parts) or "as taken"

    def apply(self, image):
        if self.scale != 1.0:
            image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        if self.turn:
            matrix, size = self.turn_matrix(image.shape)
            median = np.median(image.reshape(-1, image.shape[2] if image.ndim == 3 else 1), axis=0)
            image = cv2.warpAffine(
                image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=[float(v) for v in median]
            )
        if self.blur:
            image = cv2.GaussianBlur(image, (0, 0), self.blur)
        if self.light != 1.0 or self.shadow or self.noise:
            image = self._lit(image)
        if self.quality is not None:
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise ValueError("JPEG encoding failed")
            image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        return image

    def turn_matrix(self, shape):
        """(2x3 affine matrix, (width, height) of the canvas) that turns an image of ``shape``
        (after scaling) by ``turn`` degrees onto a canvas that holds all of it."""
        height, width = shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), self.turn, 1.0)
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        size = (int(round(height * sin + width * cos)), int(round(height * cos + width * sin)))
        matrix[0, 2] += size[0] / 2.0 - width / 2.0
        matrix[1, 2] += size[1] / 2.0 - height / 2.0
        return matrix, size

    def _lit(self, image):
        rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(image[::37, ::41]).tobytes()))
        height, width = image.shape[:2]
        gain = np.full((height, width), self.light, np.float32)
        if self.shadow:
            # a straight edge through the middle at a random angle, softened like a real one
            angle = rng.uniform(0.0, 2.0 * np.pi)
            rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
            side = np.cos(angle) * (cols - width / 2.0) + np.sin(angle) * (rows - height / 2.0) > 0
            soft = cv2.GaussianBlur(side.astype(np.float32), (0, 0), max(2.0, width / 200.0))
            gain *= 1.0 - self.shadow * soft
        lit = image.astype(np.float32) * (gain[..., np.newaxis] if image.ndim == 3 else gain)
        if self.noise:
            lit += rng.normal(0.0, self.noise, lit.shape).astype(np.float32)
        return np.clip(np.round(lit), 0, 255).astype(np.uint8)


def read_degraded(reader, path, degradation):
    """``predict.read_file`` of a harder copy: outline and boxes in the photo's own pixels."""
    with open(str(path), "rb") as handle:
        image = predict.decode_image(handle.read())
    result = {"file": str(path)}
    result.update(reader.read_still(degradation.apply(image), "grid"))
    back = 1.0 / degradation.scale
    if degradation.turn:
        scaled = (
            int(round(image.shape[0] * degradation.scale)),
            int(round(image.shape[1] * degradation.scale)),
        )
        unturn = cv2.invertAffineTransform(degradation.turn_matrix(scaled)[0])
    else:
        unturn = None

    def to_photo(points):
        points = np.float32(points).reshape(-1, 1, 2)
        if unturn is not None:
            points = cv2.transform(points, unturn)
        return (points.reshape(-1, 2) * back).tolist()

    if result.get("outline") is not None:
        result["outline"] = to_photo(result["outline"])
    for digit in result.get("digits", []):
        if digit.get("box") is not None:
            x, y, w, h = digit["box"]
            (left, top), (right, bottom) = to_photo([[x, y], [x + w, y + h]])
            digit["box"] = [left, top, right - left, bottom - top]
    return result


def evaluate(photos, reader, progress=None, degradation=None):
    """(results, scores) for every photo, read as ``predict --roi grid`` (a harder copy of
    it with a ``Degradation``)."""
    results, scores = [], []
    for index, photo in enumerate(photos):
        if degradation:
            result = read_degraded(reader, photo.path, degradation)
        else:
            result = predict.read_file(reader, str(photo.path), "grid")
        results.append(result)
        scores.append(score(photo, result))
        if progress:
            progress(index + 1, len(photos), scores[-1])
    return results, scores


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="sudoku-photos folder")
    parser.add_argument("--config", default=None, help="daemon config (preprocessing, backend)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--failures", default="docs/failures/real", help="folder for failure images")
    parser.add_argument("--failure-count", type=int, default=10)
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="failure images")
    parser.add_argument("--out", default="docs/eval/real.json", help="per-photo results (JSON)")
    parser.add_argument("--quiet", action="store_true", help="no per-photo progress")
    parser.add_argument("--blur", type=float, default=0.0, help="read copies blurred by this sigma (px)")
    parser.add_argument("--scale", type=float, default=1.0, help="read copies resized by this factor")
    parser.add_argument("--jpeg", type=int, default=None, help="read copies saved at this JPEG quality")
    parser.add_argument("--light", type=float, default=1.0, help="read copies with their light times this")
    parser.add_argument(
        "--shadow", type=float, default=0.0, help="read copies with a shadow this much darker across them"
    )
    parser.add_argument(
        "--noise", type=float, default=0.0, help="read copies with sensor noise of this sigma"
    )
    parser.add_argument(
        "--turn", type=float, default=0.0, help="read copies turned by this many degrees (counter-clockwise)"
    )
    return parser.parse_args(argv)


def main(args):
    from daemon import config as config_module
    from daemon.reader import Reader

    degradation = Degradation(
        args.blur, args.scale, args.jpeg, args.light, args.shadow, args.noise, args.turn
    )
    photos = load_photos(args.data, args.limit)
    config = config_module.load(args.config) if args.config else config_module.defaults()

    def progress(done, total, scored):
        if not args.quiet:
            mark = "ok " if scored["exact"] else "   "
            print(
                "%s[%3d/%d] %-16s %2d/81 cells%s"
                % (
                    mark,
                    done,
                    total,
                    scored["file"],
                    scored["cells_right"],
                    "" if scored["located"] else "  (grid not located)",
                ),
                file=sys.stderr,
            )

    started = time.perf_counter()
    with Reader.from_config(config) as reader:
        results, scores = evaluate(photos, reader, progress, degradation)
    elapsed = time.perf_counter() - started
    summary = summarise(scores)
    summary["seconds"] = round(elapsed, 1)
    summary["photos_as"] = degradation.describe()
    print("photos read     %s" % degradation.describe())
    print(report(summary))
    print("%.1f s (%.0f ms per photo)" % (elapsed, 1000.0 * elapsed / max(len(photos), 1)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "photos": scores}, indent=1) + "\n")
    if args.failures:
        written = write_failures(
            args.failures, photos, results, scores, args.failure_count, args.image_format
        )
        print("%d failure images in %s" % (len(written), args.failures))
    return 0


if __name__ == "__main__":
    run_main(main, parse_args, expected_errors=(FileNotFoundError, ValueError))
