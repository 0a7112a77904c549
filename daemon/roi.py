"""Regions of interest: frame -> list of Roi (id, box, crop).

Every mode is a class with ``extract(image) -> [Roi]``; ``create_extractor``
picks it by name. Modes that find digits themselves (segment, grid) return the
same Roi objects with ``line`` set, so the pipeline never changes.
"""

import itertools
import logging

import cv2
import numpy as np

from daemon.preprocess import (
    block_average,
    components,
    even_light,
    reduction_interpolation,
    region_ink_is_bright,
    to_gray,
)

log = logging.getLogger(__name__)


class Roi(object):
    """One crop to classify. ``box`` is (x, y, w, h) in frame pixels; ``line`` groups digits
    into numbers; ``cell`` is (row, col) in grid mode, else None; ``polarity`` overrides the
    preprocess setting for this crop when set (a box's own ``polarity``); ``judged_polarity``
    is the one the ROI stage judged for the whole grid or page the crop is in, which fills in
    for ``auto`` only; ``style`` is the box's digit style (``drum``, ``segments``, ...; None:
    any, as ``auto``)."""

    __slots__ = ("id", "box", "crop", "line", "cell", "polarity", "style", "judged_polarity")

    def __init__(self, roi_id, box, crop, line=0, cell=None, polarity=None, style=None, judged_polarity=None):
        self.id = roi_id
        self.box = box
        self.crop = crop
        self.line = line
        self.cell = cell
        self.polarity = polarity
        self.style = style
        self.judged_polarity = judged_polarity


def clip_box(box, width, height):
    """Intersect (x, y, w, h) with the frame; w or h is 0 when nothing is left."""
    x, y, w, h = box
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    return (left, top, max(0, right - left), max(0, bottom - top))


def crop_box(image, box):
    x, y, w, h = box
    return image[y : y + h, x : x + w]


class CenterRoi(object):
    """A square of ``size`` pixels in the middle of the frame (smaller frames: the largest square)."""

    def __init__(self, size):
        self.size = size

    def extract(self, image):
        height, width = image.shape[:2]
        side = min(self.size, width, height)
        box = ((width - side) // 2, (height - side) // 2, side, side)
        return [Roi("center", box, crop_box(image, box))]


class FullRoi(object):
    """The whole image as one digit, whatever its aspect ratio (a meter digit's box)."""

    def extract(self, image):
        height, width = image.shape[:2]
        return [Roi("full", (0, 0, width, height), image)]


class BoxesRoi(object):
    """A fixed list of boxes with ids, clipped to the frame; each box is read whole as one
    digit (no centre square), with its own polarity and digit style when it has them."""

    def __init__(self, boxes, polarities=None, styles=None):
        self.boxes = list(boxes)  # [(id, (x, y, w, h))]
        self.polarities = dict(polarities or {})  # id -> "dark_on_light" / "light_on_dark"
        self.styles = dict(styles or {})  # id -> "drum" / "segments" / "handwritten" / "printed"
        self._warned = set()

    def extract(self, image):
        height, width = image.shape[:2]
        rois = []
        for roi_id, box in self.boxes:
            clipped = clip_box(box, width, height)
            if clipped[2] == 0 or clipped[3] == 0:
                if roi_id not in self._warned:
                    log.warning("ROI %s %s lies outside the %dx%d frame", roi_id, box, width, height)
                    self._warned.add(roi_id)
            rois.append(
                Roi(
                    roi_id,
                    clipped,
                    crop_box(image, clipped),
                    polarity=self.polarities.get(roi_id),
                    style=self.styles.get(roi_id),
                )
            )
        return rois


def create_extractor(settings, mode=None, scale=1.0):
    """Extractor for the ``roi`` config section, in ``mode`` (default: the section's own) for
    images ``scale`` times the size the section's pixel coordinates are given for."""
    mode = mode or settings.mode

    def scaled(x, y, w, h):
        return tuple(int(round(v * scale)) for v in (x, y, w, h))

    area = settings.region
    region = scaled(area.x, area.y, area.w, area.h) if area.w and area.h else None
    if mode == "center":
        return CenterRoi(int(round(settings.size * scale)))
    if mode == "full":
        return FullRoi()
    if mode == "boxes":
        polarities = {b.id: b.polarity for b in settings.boxes if getattr(b, "polarity", "auto") != "auto"}
        styles = {b.id: b.style for b in settings.boxes if getattr(b, "style", "auto") != "auto"}
        return BoxesRoi([(b.id, scaled(b.x, b.y, b.w, b.h)) for b in settings.boxes], polarities, styles)
    if mode == "segment":
        return SegmentRoi(region, max_digits=settings.max_digits)
    if mode == "grid":
        return GridRoi(settings.grid_rows, settings.grid_cols, region, locate=settings.grid_locate)
    raise ValueError("unknown ROI mode %r" % mode)


def _region_gray(image, region):
    """(gray crop of ``region`` or the whole image, its x offset, its y offset)."""
    gray = to_gray(image)
    if region is None:
        return gray, 0, 0
    x, y, w, h = clip_box(region, gray.shape[1], gray.shape[0])
    return gray[y : y + h, x : x + w], x, y


def _reduced(gray, scale):
    """``gray`` scaled by ``scale`` (<= 1) for finding strokes."""
    if scale >= 1:
        return gray
    return cv2.resize(gray, None, fx=scale, fy=scale, interpolation=reduction_interpolation(scale))


def _ink_mask(gray, ink_bright, block_fraction=0.08, offset=12):
    """Binary mask of ink (dark on light or light on dark) with local (adaptive) thresholding;
    ``ink_bright``: the region's polarity (``preprocess.region_ink_is_bright``)."""

    if not ink_bright:
        gray = cv2.bitwise_not(gray)
    block = max(15, int(min(gray.shape) * block_fraction) | 1)
    blurred = cv2.GaussianBlur(gray, (5, 5), 0)
    return cv2.adaptiveThreshold(blurred, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, -offset)


def _stroke_mask(gray, ink_bright, stroke_fraction=0.1, offset=12):
    """Binary mask of pen strokes under uneven light: the paper's own light is taken away
    first (a closing wider than a stroke is the paper without ink), so a shadow's edge, a
    dark margin or vignetting leave nothing behind, then strokes are what stands out of the
    paper by more than ``offset`` grey levels or Otsu's level, whichever is higher.
    ``ink_bright``: the region's polarity (``region_ink_is_bright``)."""

    side = max(5, int(min(gray.shape) * stroke_fraction) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    blurred = cv2.GaussianBlur(gray, (3, 3), 0)
    operation = cv2.MORPH_TOPHAT if ink_bright else cv2.MORPH_BLACKHAT
    strokes = cv2.morphologyEx(blurred, operation, kernel)
    level, _ = cv2.threshold(strokes, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    _, mask = cv2.threshold(strokes, max(offset, 0.5 * level), 255, cv2.THRESH_BINARY)
    return mask


def _in_components(labels, parts):
    """Boolean mask of the pixels of ``labels`` that belong to one of the components ``parts``
    (a lookup table: np.isin sorts on every call, several times slower on a frame's boxes)."""
    member = np.zeros(max(int(labels.max()) if labels.size else 0, max(parts) if parts else 0) + 1, bool)
    member[list(parts)] = True
    return member[labels]


def _isolated_crop(gray, labels, parts, box, margin, columns=None):
    """Crop ``box`` (plus margin) with the ink of other components painted as paper.

    Only *other* components are painted out, so the digit keeps all its ink (adaptive
    thresholds leave thick strokes hollow; painting by the digit's own mask would too)."""
    x, y, w, h = box
    height, width = gray.shape
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    crop = gray[y0:y1, x0:x1].copy()
    local = labels[y0:y1, x0:x1]
    others = ((local > 0) & ~_in_components(local, parts)).astype(np.uint8)
    if columns is not None:  # a split part: its neighbour's columns belong to the neighbour
        outside = np.ones_like(others)
        outside[:, max(0, columns[0] - x0) : max(0, columns[1] - x0)] = 0
        others |= outside & (local > 0)
    others = cv2.dilate(others, np.ones((3, 3), np.uint8), iterations=2)
    if others.any():
        crop[others > 0] = np.median(crop[others == 0]) if (others == 0).any() else 255
    return crop, (x0, y0, x1 - x0, y1 - y0)


def _union(a, b):
    """The box [x, y, w, h, component labels] covering boxes ``a`` and ``b``."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return [x0, y0, x1 - x0, y1 - y0, a[4] + b[4]]


# With a classifier, blobs wider than this x the digit height are also tried as two digits
# (a 1 touching an 8 is no wider than one 0); the reading the classifier is surer of wins.
SPLIT_CHECK_ASPECT = 0.75
UNSURE_WHOLE = 0.6
# Cuts tried around each expected one, in digit widths; parts narrower than this are none.
PAIR_CUT_SHIFTS = (-0.4, -0.2, 0.0, 0.2, 0.4)
MIN_PART_FRACTION = 0.35
SURE_PARTS = 0.8
# Marks this many times taller than the line's digits are shadows, blobs or page edges.
MAX_DIGIT_HEIGHT_RATIO = 2.0


def _typical_height(heights):
    """The height most marks share, weighted by height: the digits' height. One shadow or
    blob twice as tall does not set it (the tallest mark did), nor do the short bars and
    ticks that belong to digits."""
    best, best_weight = heights[0], -1.0
    for height in heights:
        weight = sum(h for h in heights if 0.75 * height <= h <= 1.33 * height)
        if weight > best_weight:
            best, best_weight = height, weight
    return best


# segment mode measures the paper's light over this share of the region's shorter side: wider
# than any stroke (at a third, the generated numbers read as before; at a tenth, 4 of 150 fewer)
SEGMENT_LIGHT_FRACTION = 0.35


class SegmentRoi(object):
    """Find handwritten digits by connected components and read them as numbers.

    Strokes of one digit are merged (the bar of a 5 or 7, a broken 4); blobs too wide
    for one digit are split at projection-profile minima; digits are ordered left to
    right within lines, lines top to bottom. ``Roi.line`` carries the line index.
    """

    def __init__(
        self,
        region=None,
        max_digits=12,
        min_height_fraction=0.04,
        max_aspect=1.1,
        work_size=960,
        classifier=None,
    ):
        self.region = region  # (x, y, w, h) or None for the whole frame
        # classifier(list of crops) -> list of confidences; decides ambiguous splits (a 5 with
        # a long bar is as wide as two touching digits). Without it, geometry decides.
        self.classifier = classifier
        self.max_digits = max_digits
        self.min_height_fraction = min_height_fraction
        self.max_aspect = max_aspect  # wider than this x height: touching digits, split
        self.work_size = work_size
        # a camera's next frame shows the same wide blobs: how each was split (cut offsets,
        # or None when kept whole) is remembered for one frame, by place, size and ink profile
        self._splits = []
        self._splits_next = []

    def extract(self, image):
        self._splits, self._splits_next = self._splits_next, []
        gray, ox, oy = _region_gray(image, self.region)
        if gray.size == 0 or min(gray.shape) < 8:
            return []
        scale = min(1.0, float(self.work_size) / max(gray.shape))
        work = _reduced(gray, scale)
        ink_bright = region_ink_is_bright(work)
        if not ink_bright:
            # the stroke mask's floor is a fixed grey level: half a page in a shadow held
            # its strokes under it
            work = even_light(work, SEGMENT_LIGHT_FRACTION * min(work.shape))
        mask = _stroke_mask(work, ink_bright)
        # the digits inherit the page's polarity, judged once on all of it: a bold digit alone
        # can leave it open (preprocess.POLARITY_OPEN)
        polarity = "light_on_dark" if ink_bright else "dark_on_light"
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        count, labels, stats, _ = components(mask)
        min_height = max(6, self.min_height_fraction * work.shape[0])
        boxes = []
        for index in range(1, count):
            x, y, w, h, area = stats[index]
            if h < min_height * 0.35 and w < min_height * 0.35:
                continue  # specks
            if area < 0.15 * min_height * min_height * 0.1:
                continue
            if w > 0.9 * work.shape[1] or h > 0.9 * work.shape[0]:
                continue  # page edges, ruled lines, frames
            if x == 0 or y == 0 or x + w >= work.shape[1] or y + h >= work.shape[0]:
                continue  # cut by the frame's edge: a table edge, a margin, half a digit
            boxes.append([x, y, w, h, [index]])
        boxes = self._attach_small_strokes(
            self._merge_strokes([b for b in boxes if b[3] >= min_height * 0.35])
        )
        boxes = [b for b in boxes if b[3] >= min_height]
        lines = self._lines(boxes)
        rois = []
        for line_index, line in enumerate(lines):
            for position, box in enumerate(self._split_wide(line, labels, work)):
                if len(rois) >= self.max_digits:
                    return rois  # no need to split (and classify) the lines left over
                crop = self._crop(work, labels, box)
                full_box = tuple(int(round(v / scale)) for v in box[:4])
                full_box = (full_box[0] + ox, full_box[1] + oy, full_box[2], full_box[3])
                rois.append(
                    Roi(
                        "d%d_%d" % (line_index, position),
                        full_box,
                        crop,
                        line_index,
                        judged_polarity=polarity,
                    )
                )
        return rois

    @staticmethod
    def _crop(work, labels, box):
        """The box's own ink on clean paper (neighbours painted out); split parts keep their columns."""
        columns = (box[0], box[0] + box[2]) if len(box) > 5 else None
        crop, _ = _isolated_crop(work, labels, box[4], box[:4], max(2, box[3] // 6), columns)
        return crop

    def _best_split(self, box, split, pieces, labels, work):
        """(split, [whole confidence] + part confidences) for the cuts the classifier reads best.

        Touching digits are cut at the thinnest column near where a cut is expected, but the
        thinnest column is often inside a digit (the waist of an 8): cuts shifted by up to two
        fifths of a digit either way are tried too, in one batch, and the set whose worst part
        reads best is kept."""
        x, y, w, h, parts = box
        step = w / float(pieces)
        choices = []
        for k in range(1, pieces):
            found = split[k][0] - x
            shifted = [int(round(k * step + f * step)) for f in PAIR_CUT_SHIFTS]
            choices.append(sorted(set([found] + shifted)))
        candidates = []
        for cuts in itertools.product(*choices):
            edges = [0] + list(cuts) + [w]
            if all(b - a >= MIN_PART_FRACTION * step for a, b in zip(edges[:-1], edges[1:])):
                candidates.append(
                    [[x + a, y, b - a, h, parts, "split"] for a, b in zip(edges[:-1], edges[1:])]
                )
        if not candidates:
            candidates = [split]
        crops = [self._crop(work, labels, box)]
        for candidate in candidates:
            crops.extend(self._crop(work, labels, c) for c in candidate)
        confidences = self.classifier(crops)
        whole, rest = confidences[0], confidences[1:]
        scores = [min(rest[i * pieces : (i + 1) * pieces]) for i in range(len(candidates))]
        best = max(range(len(candidates)), key=lambda i: scores[i])
        return candidates[best], [whole] + rest[best * pieces : (best + 1) * pieces]

    @staticmethod
    def _merge_strokes(boxes):
        """Merge components that overlap horizontally (parts of one digit)."""
        merged = True
        while merged:
            merged = False
            boxes.sort(key=lambda b: b[0])
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    a, b = boxes[i], boxes[j]
                    overlap = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
                    narrow = min(a[2], b[2])
                    vertical_gap = max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3])
                    # pieces of one digit stay about one digit tall together; two digits of a
                    # column (lines close together) would make one twice as tall
                    union_height = max(a[1] + a[3], b[1] + b[3]) - min(a[1], b[1])
                    tallest = max(a[3], b[3])
                    if (
                        overlap > 0.5 * narrow
                        and vertical_gap < 0.5 * tallest
                        and union_height <= 1.4 * tallest
                    ):
                        boxes[i] = _union(a, b)
                        del boxes[j]
                        merged = True
                        break
                if merged:
                    break
        return boxes

    @staticmethod
    def _attach_small_strokes(boxes):
        """Short strokes (the bar of a 5, a tick) join the tall component they overlap or touch;
        the rest (specks, dots) are dropped."""
        if not boxes:
            return boxes
        typical = _typical_height([b[3] for b in boxes])
        boxes = [b for b in boxes if b[3] <= MAX_DIGIT_HEIGHT_RATIO * typical]
        big = [b for b in boxes if b[3] >= 0.45 * typical]
        for small in (b for b in boxes if b[3] < 0.45 * typical):
            best, best_score = None, -0.15 * typical
            for candidate in big:
                overlap = min(small[0] + small[2], candidate[0] + candidate[2]) - max(small[0], candidate[0])
                vertical_gap = max(small[1], candidate[1]) - min(
                    small[1] + small[3], candidate[1] + candidate[3]
                )
                if vertical_gap < 0.3 * typical and overlap > best_score:
                    best, best_score = candidate, overlap
            if best is not None:
                best[:] = _union(best, small)
        return big

    @staticmethod
    def _lines(boxes):
        """Group boxes into lines by vertical overlap; lines top to bottom, boxes left to right."""
        lines = []
        for box in sorted(boxes, key=lambda b: b[1] + b[3] / 2.0):
            centre = box[1] + box[3] / 2.0
            for line in lines:
                top = min(b[1] for b in line)
                bottom = max(b[1] + b[3] for b in line)
                if top <= centre <= bottom:
                    line.append(box)
                    break
            else:
                lines.append([box])
        return [sorted(line, key=lambda b: b[0]) for line in lines]

    def _split_wide(self, line, labels, work=None):
        heights = sorted(b[3] for b in line)
        typical = heights[len(heights) // 2]
        out = []
        for box in line:
            x, y, w, h, parts = box
            reference = max(h, typical)
            ambiguous = (
                self.classifier is not None and work is not None and w > SPLIT_CHECK_ASPECT * reference
            )
            if w <= self.max_aspect * reference and not ambiguous:
                out.append(box)
                continue
            pieces = max(2, int(round(w / (0.8 * reference))))
            ink = _in_components(labels[y : y + h, x : x + w], parts).sum(axis=0).astype(np.float64)
            key = _blob_signature(box, ink)
            cuts = _remembered_split(self._splits, key, typical)
            if cuts is not False:
                self._splits_next.append((key, cuts))
                out.extend([box] if cuts is None else _split_at(box, cuts))
                continue
            cuts = [0]
            for k in range(1, pieces):
                expected = k * w / float(pieces)
                # two touching digits may be a narrow 1 and a wide 8: look far from the middle
                window = int(max(2, (0.3 * w) if pieces == 2 else (0.25 * w / pieces)))
                low, high = int(max(cuts[-1] + 2, expected - window)), int(min(w - 2, expected + window))
                cut = low + int(np.argmin(ink[low:high])) if high > low else int(expected)
                cuts.append(cut)
            cuts.append(w)
            split = [[x + a, y, b - a, h, parts, "split"] for a, b in zip(cuts[:-1], cuts[1:])]
            if self.classifier is not None and work is not None and pieces <= 3:
                split, confidences = self._best_split(box, split, pieces, labels, work)
                if w <= self.max_aspect * reference:
                    # no wider than one digit may be: split only a blob the classifier cannot
                    # read into parts it reads well (a 1 touching an 8)
                    keep = confidences[0] >= UNSURE_WHOLE or min(confidences[1:]) < SURE_PARTS
                else:
                    keep = confidences[0] >= min(confidences[1:])  # one wide digit reads better
                if keep:
                    self._splits_next.append((key, None))
                    out.append(box)
                    continue
            self._splits_next.append((key, [part[0] - x for part in split[1:]]))
            out.extend(split)
        return out


# A wide blob is the one of the last frame when its box moved by at most this share of the
# digits' height and its column ink profile (12 bins, 0..1) by at most SPLIT_PROFILE_CHANGE
# on average and SPLIT_PROFILE_BIN_CHANGE in any bin (sensor noise moves a bin by up to 0.2).
SPLIT_BOX_CHANGE = 0.1
SPLIT_PROFILE_CHANGE = 0.1
SPLIT_PROFILE_BIN_CHANGE = 0.35


def _blob_signature(box, ink):
    """(box, column ink profile in 12 bins scaled to 0..1) of a wide blob."""
    bins = np.array_split(ink, 12) if len(ink) >= 12 else [ink]
    profile = np.array([b.mean() for b in bins])
    return np.array(box[:4], np.float64), profile / max(profile.max(), 1e-6)


def _remembered_split(remembered, key, typical):
    """The cuts (or None: kept whole) of the last frame's blob that ``key`` matches; False when
    none does. A still camera's noise moves a blob's box and profile a little, never more."""
    box, profile = key
    for (last_box, last_profile), cuts in remembered:
        if len(last_profile) != len(profile) or np.abs(last_box - box).max() > max(
            2.0, SPLIT_BOX_CHANGE * typical
        ):
            continue
        change = np.abs(last_profile - profile)
        if change.mean() <= SPLIT_PROFILE_CHANGE and change.max() <= SPLIT_PROFILE_BIN_CHANGE:
            return cuts
    return False


def _split_at(box, cuts):
    """``box`` cut at the column offsets ``cuts`` (split parts, as _split_wide makes them)."""
    x, y, w, h, parts = box
    edges = [0] + list(cuts) + [w]
    return [[x + a, y, b - a, h, parts, "split"] for a, b in zip(edges[:-1], edges[1:])]


GRID_WORK_SIZE = 800  # the grid is searched for in a copy whose longer side is at most this
GRID_MIN_AREA = 0.04  # smallest grid, as a share of the searched image
# ink-mask offsets the grid is searched with, in turn while none is found: 6 for most photos;
# a blurred or dim one has thin lines only a lower offset keeps
GRID_SEARCH_OFFSETS = (6, 3)
# (turned, ink-mask offset) in the order they are tried: the grid as the photo lies at each
# offset, then turned back at the lower one only (the fuller mask; a turn costs a sweep)
GRID_SEARCHES = tuple((False, offset) for offset in GRID_SEARCH_OFFSETS) + ((True, GRID_SEARCH_OFFSETS[-1]),)
GRID_MIN_SCORE = 0.45  # line coverage less cell fill below which a quadrilateral is no grid
# Refined corners replace the found ones only when the score rises this much: a small gain
# is the score's own noise, and the outline of a clean grid is already as good as it gets.
GRID_REFINE_GAIN = 0.03
GRID_CELL_SLACK = 0.12  # a digit's box may overrun its cell by this share (warp, curved paper)
GRID_WALL_SHARE = 0.7  # a cell's component with more of its ink along the walls is wall, not digit
# Registering the cells to the grid's inner lines: a line is looked for within this share of
# a cell of where it belongs and counts at a crossing when its ink covers GRID_LINE_SUPPORT
# of a cell's length there; the cells are registered when GRID_MIN_CROSSINGS crossings agree
# (RANSAC inliers) and the crossings found span GRID_CROSSINGS_SPREAD of the grid each way
# (a blurred photo shows only its thick lines; a fit held in one corner says nothing of
# the rest).
GRID_LINE_REACH = 0.3
GRID_LINE_SUPPORT = 0.5
GRID_MIN_CROSSINGS = 8
GRID_CROSSINGS_SPREAD = 0.5
# a piece of a digit's broken stroke lies within the digit's box, give or take this share of a cell
GRID_PART_REACH = 0.1
GRID_DIGIT_MIN_HEIGHT = 0.25  # a digit in a grid cell is at least this share of the cell tall (or wide)
# A camera's grid stays where it was: the last outline is kept while its score on the new frame
# stays within this of the score it was found with; below, the grid is searched for again.
GRID_TRACK_DROP = 0.05
# a page turned by up to this many degrees either way is found (the search turns its lines
# back when none is found as the photo lies)
GRID_TURNS = (-40, -32, -24, -16, -8, 8, 16, 24, 32, 40)


def _line_masks(mask, length):
    """(horizontal, vertical): the strokes of a mask at least ``length`` long in each direction."""
    horizontal = cv2.morphologyEx(
        mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1))
    )
    vertical = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, length)))
    return horizontal, vertical


def _long_lines(mask, length=None, line_masks=None):
    """Only the horizontal and vertical strokes of a mask at least ``length`` long (default:
    a 25th of its shorter side): frames, ruled lines, grid lines; text removed."""
    horizontal, vertical = line_masks or _line_masks(mask, length or max(9, min(mask.shape) // 25))
    lines = cv2.bitwise_or(horizontal, vertical)
    return cv2.dilate(lines, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3)))


def _intersections(horizontal, vertical, rows, cols):
    """(found, ideal): float32 [N,2] points where the lines of a flat grid (its line masks)
    cross, each measured from the ink of its two lines within half a cell of the crossing,
    and where they belong in the flat grid. Crossings whose lines are missing or faint
    there (GRID_LINE_SUPPORT) are left out."""
    height, width = horizontal.shape
    step_x, step_y = (width - 1) / float(cols), (height - 1) / float(rows)
    # ink of the horizontal lines, summed along each row (and of the vertical along each
    # column) from the image's edge: any stretch's count is a difference of two
    along_rows = np.zeros((height, width + 1), np.int32)
    along_rows[:, 1:] = np.cumsum(horizontal > 0, axis=1)
    along_cols = np.zeros((height + 1, width), np.int32)
    along_cols[1:] = np.cumsum(vertical > 0, axis=0)
    found, ideal = [], []
    # inner lines only: the frame is drawn thicker, and its outer edge (not its middle) is
    # where the corners put it
    for row in range(1, rows):
        y = row * step_y
        ys = np.arange(
            max(0, int(round(y - GRID_LINE_REACH * step_y))),
            min(height, int(round(y + GRID_LINE_REACH * step_y)) + 1),
        )
        y0, y1 = max(0, int(round(y - step_y / 2))), min(height, int(round(y + step_y / 2)))
        for col in range(1, cols):
            x = col * step_x
            x0, x1 = max(0, int(round(x - step_x / 2))), min(width, int(round(x + step_x / 2)))
            xs = np.arange(
                max(0, int(round(x - GRID_LINE_REACH * step_x))),
                min(width, int(round(x + GRID_LINE_REACH * step_x)) + 1),
            )
            across_row = along_rows[ys, x1] - along_rows[ys, x0]  # the horizontal line, row by row
            across_col = along_cols[y1, xs] - along_cols[y0, xs]  # the vertical line, column by column
            if across_row.max() < GRID_LINE_SUPPORT * (x1 - x0) or across_col.max() < GRID_LINE_SUPPORT * (
                y1 - y0
            ):
                continue
            # the middle of each line: its rows (columns) weighted by their ink, the faint
            # fringe left out
            across_row = np.where(across_row >= across_row.max() / 2, across_row, 0)
            across_col = np.where(across_col >= across_col.max() / 2, across_col, 0)
            found.append(
                (
                    float(np.dot(xs, across_col)) / across_col.sum(),
                    float(np.dot(ys, across_row)) / across_row.sum(),
                )
            )
            ideal.append((x, y))
    return np.float32(found).reshape(-1, 2), np.float32(ideal).reshape(-1, 2)


def _hull_of_cell_groups(lines, min_area):
    """Convex hulls of groups of neighbouring, similar holes in a line mask (the cells or 3x3
    boxes of a grid). They find a grid whose frame runs on into other lines (a rule under
    the puzzle, the crossword beside it), where the frame's own outline is no quadrilateral."""
    contours, hierarchy = cv2.findContours(lines, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    smallest = (0.015 * min(lines.shape)) ** 2
    holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] >= 0 and cv2.contourArea(c) >= smallest]
    if len(holes) < 4:
        return []
    areas = np.array([cv2.contourArea(c) for c in holes])
    centres = np.array([c.reshape(-1, 2).mean(axis=0) for c in holes])
    parent = list(range(len(holes)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # the pairs of similar holes near each other, all at once (a page of text has hundreds)
    ratio = areas[:, np.newaxis] / areas[np.newaxis, :]
    distance = np.linalg.norm(centres[:, np.newaxis] - centres[np.newaxis, :], axis=2)
    near = distance < 1.6 * np.sqrt(np.maximum(areas[:, np.newaxis], areas[np.newaxis, :]))
    for i, j in np.argwhere(np.triu((0.5 < ratio) & (ratio < 2.0) & near, 1)):
        parent[root(i)] = root(j)
    groups = {}
    for i in range(len(holes)):
        groups.setdefault(root(i), []).append(holes[i])
    hulls = []
    for members in groups.values():
        if len(members) >= 4:
            hull = cv2.convexHull(np.concatenate(members))
            if cv2.contourArea(hull) >= min_area:
                hulls.append(hull)
    return hulls


def _along_the_walls(window, component):
    """Whether most of a component's ink in a cell lies along the cell's walls: the corner of
    two walls the line removal missed (it reads as a 7 or a 1), not a digit, which is printed
    inside its cell."""
    band = max(1, int(round(GRID_CELL_SLACK * window.shape[0])))
    ink = window == component
    total = cv2.countNonZero(ink.view(np.uint8))
    inner = cv2.countNonZero(ink[band:-band, band:-band].view(np.uint8))
    return total > 0 and total - inner > GRID_WALL_SHARE * total


def _paper_levels(flat, mask, rows, cols):
    """The mean grey of each cell's paper (its pixels off ``mask``), rows x cols, in three
    block averages over the whole grid (a cell without a digit is painted with it)."""
    paper = (mask == 0).astype(np.float32)
    shade = cv2.resize(flat.astype(np.float32) * paper, (cols, rows), interpolation=cv2.INTER_AREA)
    share = cv2.resize(paper, (cols, rows), interpolation=cv2.INTER_AREA)
    whole = cv2.resize(flat, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    levels = np.where(share > 0, shade / np.maximum(share, 1e-6), whole)
    return np.clip(np.round(levels), 0, 255).astype(np.uint8)


# A frame whose 1/8 thumbnail differs from the last verified one by at most this many grey
# levels on average (and GRID_STILL_MAX_DIFF anywhere) shows the same grid in the same place:
# a still camera's sensor noise averages out in the thumbnail; a hand, a move or a new page
# does not.
GRID_STILL_MEAN_DIFF = 3.0
GRID_STILL_MAX_DIFF = 24


def _thumbnail(gray):
    """The frame reduced 8 times."""
    return block_average(gray, 8, min_side=4)


def _unchanged(before, now):
    """Whether two thumbnails show the same scene (see GRID_STILL_MEAN_DIFF)."""
    if before is None or before.shape != now.shape:
        return False
    difference = cv2.absdiff(before, now)
    return cv2.mean(difference)[0] <= GRID_STILL_MEAN_DIFF and int(difference.max()) <= GRID_STILL_MAX_DIFF


def _order_corners(points):
    """Four points as (tl, tr, br, bl)."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    centre = points.mean(axis=0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    points = points[np.argsort(angles)]  # clockwise in image coordinates, starting anywhere
    start = int(np.argmin(points.sum(axis=1)))
    return np.roll(points, -start, axis=0)


def _quads_of_hull(hull):
    """Quadrilaterals that approximate a convex hull: the polygon simplified until four
    corners are left, and the hull's extreme points along both diagonals."""
    quads = []
    perimeter = cv2.arcLength(hull, True)
    for epsilon in (0.02, 0.04, 0.07):
        approx = cv2.approxPolyDP(hull, epsilon * perimeter, True)
        if len(approx) == 4:
            quads.append(_order_corners(approx))
            break
    points = hull.reshape(-1, 2).astype(np.float32)
    total, diff = points.sum(axis=1), points[:, 0] - points[:, 1]
    extremes = points[[np.argmin(total), np.argmax(diff), np.argmax(total), np.argmin(diff)]]
    if len({tuple(p) for p in extremes.tolist()}) == 4:
        quads.append(_order_corners(extremes))
    return quads


class GridRoi(object):
    """A rows x cols grid (sudoku, forms): optional automatic location of the outer frame
    (largest quadrilateral, perspective warp), cell borders removed before classifying.
    ``Roi.line`` is the row, ``Roi.cell`` the (row, col)."""

    def __init__(self, rows=9, cols=9, region=None, locate=True, cell_px=48):
        self.rows = rows
        self.cols = cols
        self.region = region
        self.locate = locate
        self.cell_px = cell_px
        # (searched image shape, corners there, score when found, thumbnail of the frame,
        # ink-mask offset it was found with)
        self._tracked = None
        self._searched = False  # whether the last find_grid looked at the frame (no still camera)
        self._no_grid = None  # thumbnail of the last frame searched in vain
        self._correction = None  # the flat grid registered to its lines (_registration_to_lines)

    def find_grid(self, gray):
        """Corners (tl, tr, br, bl) of the grid's outer frame, or None.

        Candidate quadrilaterals come from the outlines of large ink components (with and
        without text, which touches the frame in newspapers, filtered out); each is warped
        flat and scored by how much ink lies along the rows + 1 and cols + 1 lines a grid
        has there. Polarity, text, other puzzles and dark margins change the candidates,
        not the verdict. On a camera's next frames the grid found is kept while it still
        scores as well (GRID_TRACK_DROP): the search runs again only when it moved."""
        scale = min(1.0, float(GRID_WORK_SIZE) / max(gray.shape))
        thumbnail = _thumbnail(gray)
        tracked = self._tracked
        self._searched = False
        if tracked is not None and _unchanged(tracked[3], thumbnail):
            return (tracked[1] / scale).astype(np.float32)  # a still camera: nothing moved
        if tracked is None and _unchanged(self._no_grid, thumbnail):
            return None  # a still camera that shows no grid: no search until the scene changes
        self._searched = True  # searched, or checked again: extract_grid registers it to its lines
        # INTER_AREA: bilinear here loses thin grid lines (one real photo's grid not found)
        work = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        masks = {}  # by ink-mask offset: the check and the search share one
        ink_bright = region_ink_is_bright(work)  # and every mask the polarity, judged once
        if tracked is not None:
            # checked with the threshold it was found with
            mask = masks[tracked[4]] = _ink_mask(work, ink_bright, block_fraction=0.04, offset=tracked[4])
            if tracked[0] == mask.shape and self._grid_score(mask, tracked[1]) >= max(
                GRID_MIN_SCORE, tracked[2] - GRID_TRACK_DROP
            ):
                self._tracked = tracked[:3] + (thumbnail, tracked[4])
                return (tracked[1] / scale).astype(np.float32)
        # a blurred or dim photo: its thin inner lines fall under the first threshold; a
        # page turned by more than a few degrees: its lines are no longer horizontal and
        # vertical, and are looked for in copies turned back
        for turned, offset in GRID_SEARCHES:
            mask = masks.get(offset)
            if mask is None:
                mask = masks[offset] = _ink_mask(work, ink_bright, block_fraction=0.04, offset=offset)
            best, best_score = self._search(mask, turned)
            if best is not None:
                break
        if best is None:
            self._tracked, self._no_grid = None, thumbnail
            return None
        self._tracked, self._no_grid = (mask.shape, best, best_score, thumbnail, offset), None
        return (best / scale).astype(np.float32)

    def _search(self, mask, turned=False):
        """(corners, score) of the best grid among the candidates of an ink mask, refined, or
        (None, GRID_MIN_SCORE) when none scores as a grid. ``turned``: the candidates of a
        page turned by more than a few degrees (``_turned_candidates``) instead."""
        min_area = GRID_MIN_AREA * mask.shape[0] * mask.shape[1]
        candidates = self._turned_candidates(mask, min_area) if turned else self._candidates(mask, min_area)
        best, best_score = None, GRID_MIN_SCORE
        for quad in candidates:
            quad_score = self._grid_score(mask, quad)
            if quad_score > best_score:
                best, best_score = quad, quad_score
        if best is None:
            return None, best_score
        refined, refined_score = self._refine(mask, best, best_score)
        if refined_score > best_score + GRID_REFINE_GAIN:
            best, best_score = refined, refined_score
        return best, best_score

    def _candidates(self, mask, min_area):
        """Quadrilaterals that may be the grid: the outlines of large ink components and of
        its long lines, and the hulls of groups of cell-shaped holes, each also grown by a row
        or column."""
        candidates = []
        lines = _long_lines(mask)
        for source in (mask, lines):
            # [-2]: the contours, whether OpenCV 3 or 4 answers
            for contour in cv2.findContours(source, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]:
                hull = cv2.convexHull(contour)
                if cv2.contourArea(hull) < min_area:
                    continue
                candidates.extend(_quads_of_hull(hull))
        for hull in _hull_of_cell_groups(lines, min_area):
            for quad in _quads_of_hull(hull):
                candidates.append(quad)
                candidates.extend(self._one_more_row_or_col(quad))
        return candidates

    def _turned_candidates(self, mask, min_area):
        """The ``_candidates`` of a copy of ``mask`` turned by the angle (GRID_TURNS) that
        leaves the most of it in long straight lines, turned back into ``mask``'s pixels."""
        height, width = mask.shape
        small = cv2.resize(mask, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        length = max(9, min(small.shape) // 25)
        best_turn, best_ink = 0.0, cv2.countNonZero(_long_lines(small, length))
        for turn in GRID_TURNS:
            matrix = cv2.getRotationMatrix2D((small.shape[1] / 2.0, small.shape[0] / 2.0), turn, 1.0)
            ink = cv2.countNonZero(_long_lines(cv2.warpAffine(small, matrix, small.shape[::-1]), length))
            if ink > best_ink:
                best_turn, best_ink = turn, ink
        if not best_turn:
            return []
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), best_turn, 1.0)
        back = cv2.invertAffineTransform(matrix)
        return [
            cv2.transform(quad.reshape(-1, 1, 2), back).reshape(4, 2).astype(np.float32)
            for quad in self._candidates(cv2.warpAffine(mask, matrix, (width, height)), min_area)
        ]

    def _refine(self, mask, quad, quad_score):
        """Move the corners one at a time while the grid score improves (coarse to fine):
        a quadrilateral from a hull that misses a corner, or cut short by a curved page,
        settles on the frame."""
        side = float(np.mean([np.linalg.norm(quad[i] - quad[(i + 1) % 4]) for i in range(4)]))
        moves = ((1, 0), (-1, 0), (0, 1), (0, -1))
        for step in (0.02 * side, 0.01 * side, 0.005 * side):
            for _ in range(6):
                improved = False
                for corner in range(4):
                    for dx, dy in moves:
                        trial = quad.copy()
                        trial[corner] += (dx * step, dy * step)
                        trial_score = self._grid_score(mask, trial)
                        if trial_score > quad_score + 1e-4:
                            quad, quad_score, improved = trial, trial_score, True
                if not improved:
                    break
        return quad, quad_score

    def _one_more_row_or_col(self, quad):
        """The quadrilateral grown by one cell at each side in turn: cells that lost a wall
        (a frame line swallowed by a dark margin or a shadow) are missing from their group."""
        grown = []
        # (corners that move, the corners they move away from, cells the quadrilateral spans)
        for moving, fixed, spans in (
            ((0, 1), (3, 2), self.rows - 1),
            ((3, 2), (0, 1), self.rows - 1),
            ((0, 3), (1, 2), self.cols - 1),
            ((1, 2), (0, 3), self.cols - 1),
        ):
            trial = quad.copy()
            for corner, anchor in zip(moving, fixed):
                trial[corner] = quad[corner] + (quad[corner] - quad[anchor]) / float(spans)
            grown.append(trial)
        return grown

    def _grid_score(self, mask, quad, cell=16):
        """How much a quadrilateral looks like this grid: mean coverage of its expected lines
        by ink, less the ink inside the cells (a dark area covers every line too)."""
        width, height = self.cols * cell, self.rows * cell
        target = np.float32([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]])
        flat = cv2.warpPerspective(
            mask, cv2.getPerspectiveTransform(quad, target), (width, height), flags=cv2.INTER_NEAREST
        )
        band = max(1, cell // 8)
        rows = np.minimum(np.arange(self.rows + 1) * cell, height - 1)
        cols = np.minimum(np.arange(self.cols + 1) * cell, width - 1)
        # a line pixel counts when ink lies within ``band`` of it across the line
        across_rows = cv2.dilate(flat, np.ones((2 * band + 1, 1), np.uint8))
        across_cols = cv2.dilate(flat, np.ones((1, 2 * band + 1), np.uint8))
        coverage = (cv2.countNonZero(across_rows[rows]) + cv2.countNonZero(across_cols[:, cols])) / float(
            len(rows) * width + len(cols) * height
        )
        inner = self._cell_interiors(width, height, cell, band)
        fill = cv2.countNonZero(cv2.bitwise_and(flat, inner)) / float(max(1, cv2.countNonZero(inner)))
        return coverage - fill

    def _cell_interiors(self, width, height, cell, band):
        """uint8 mask of the flat grid without a margin of twice ``band`` around its lines."""
        key = (width, height, cell, band)
        if getattr(self, "_interiors_key", None) != key:
            inner = np.full((height, width), 255, np.uint8)
            for k in range(self.rows + 1):
                inner[max(0, k * cell - 2 * band) : k * cell + 2 * band + 1] = 0
            for k in range(self.cols + 1):
                inner[:, max(0, k * cell - 2 * band) : k * cell + 2 * band + 1] = 0
            self._interiors_key, self._interiors = key, inner
        return self._interiors

    def extract(self, image):
        return self.extract_grid(image)[0]

    def extract_grid(self, image):
        """(cell ROIs, outline): the outline is the grid's four corners in frame pixels
        (clockwise from top-left), None when the grid was not located."""

        gray, ox, oy = _region_gray(image, self.region)
        if gray.size == 0:
            return [], None
        size = (self.cols * self.cell_px, self.rows * self.cell_px)
        corners = self.find_grid(gray) if self.locate else None
        outline = None if corners is None else [(float(x) + ox, float(y) + oy) for x, y in corners]
        if corners is None:
            corners = np.float32(
                [
                    [0, 0],
                    [gray.shape[1] - 1, 0],
                    [gray.shape[1] - 1, gray.shape[0] - 1],
                    [0, gray.shape[0] - 1],
                ]
            )
        target = np.float32([[0, 0], [size[0] - 1, 0], [size[0] - 1, size[1] - 1], [0, size[1] - 1]])
        warp = cv2.getPerspectiveTransform(corners, target)
        # the four corners put the frame in place; its inner lines put every cell in place (the
        # correction is measured when the grid was looked for, kept while the camera is still)
        if outline is None:
            self._correction = None
        elif not self._searched and self._correction is not None:
            warp = self._correction.dot(warp)
        flat = cv2.warpPerspective(gray, warp, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        ink_bright = region_ink_is_bright(flat)
        flat = self._evenly_lit(flat, ink_bright)
        mask, labels, stats, line_masks = self._digit_components(flat, ink_bright)
        if outline is not None and self._searched:
            self._correction = self._registration_to_lines(line_masks)
            if self._correction is not None:
                warp = self._correction.dot(warp)
                flat = cv2.warpPerspective(
                    gray, warp, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
                )
                flat = self._evenly_lit(flat, ink_bright)
                mask, labels, stats, _ = self._digit_components(flat, ink_bright)
        cores = self._digit_cores(stats)
        cell = self.cell_px
        # every cell's top-left and bottom-right corner back in frame pixels, in one call
        xs, ys = np.meshgrid(np.arange(self.cols) * cell, np.arange(self.rows) * cell)
        starts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        corners_back = cv2.perspectiveTransform(
            np.concatenate([starts, starts + cell]).reshape(-1, 1, 2), cv2.invert(warp)[1]
        ).reshape(2, -1, 2)
        # the cells inherit the grid's polarity: it was judged once, on the whole flat grid
        polarity = "light_on_dark" if ink_bright else "dark_on_light"
        paper_levels = _paper_levels(flat, mask, self.rows, self.cols)
        rois = []
        for index in range(self.rows * self.cols):
            row, col = divmod(index, self.cols)
            x0, y0 = col * cell, row * cell
            crop = self._cell_crop(
                flat, mask, labels, stats, x0, y0, cores.get(index), paper_levels[row, col], ink_bright
            )
            (a, b) = corners_back[0][index], corners_back[1][index]
            box = (int(a[0]) + ox, int(a[1]) + oy, max(1, int(b[0] - a[0])), max(1, int(b[1] - a[1])))
            rois.append(Roi("r%dc%d" % (row, col), box, crop, row, (row, col), judged_polarity=polarity))
        return rois, outline

    def _evenly_lit(self, flat, ink_bright):
        """The flat grid with its paper evenly lit (``preprocess.even_light``, a closing half a
        cell wide): the ink mask's offset and the crops' contrast floor are fixed grey levels,
        which a shadow or dim light would otherwise put out of reach. Light ink on dark paper
        is left as it is (its dark paper has no light to divide by). Half a cell is narrower
        than a digit, so the closing is by lines (a square took the part of a digit on a
        shadow's edge for shadowed paper)."""
        if ink_bright:
            return flat
        return even_light(flat, self.cell_px // 2, by_lines=True)

    def _digit_cores(self, stats):
        """{cell index: the components that are the core of its digit}: a box centred in the
        cell (within a quarter of it), inside it but for a slack, and tall enough to be a
        digit. A box can be centred in one cell only, so one pass over the components
        assigns them all."""
        cell = float(self.cell_px)
        x, y, w, h = (stats[1:, k].astype(np.float64) for k in range(4))
        centre_x, centre_y = x + w / 2.0, y + h / 2.0
        col, row = np.floor(centre_x / cell), np.floor(centre_y / cell)
        x0, y0 = col * cell, row * cell
        slack = GRID_CELL_SLACK * cell
        # the longer side, not the height: in a photo taken sideways a 1 lies flat
        is_core = (
            (np.maximum(w, h) >= GRID_DIGIT_MIN_HEIGHT * cell)
            & (h <= 0.95 * cell)
            & (w <= 0.95 * cell)
            & (np.abs(centre_x - (x0 + cell / 2.0)) <= 0.25 * cell)
            & (np.abs(centre_y - (y0 + cell / 2.0)) <= 0.25 * cell)
            # a digit is printed inside its cell; a grid line the warp missed runs on
            & (x >= x0 - slack)
            & (y >= y0 - slack)
            & (x + w <= x0 + cell + slack)
            & (y + h <= y0 + cell + slack)
            & (row >= 0)
            & (row < self.rows)
            & (col >= 0)
            & (col < self.cols)
        )
        cores = {}
        for component in np.flatnonzero(is_core):
            cell_index = int(row[component]) * self.cols + int(col[component])
            cores.setdefault(cell_index, []).append(int(component) + 1)
        return cores

    def _digit_components(self, flat, ink_bright):
        """(ink mask, component labels, component stats) of the flat grid without its lines."""
        mask = _ink_mask(flat, ink_bright, block_fraction=0.05, offset=8)
        line_masks = _line_masks(mask, int(self.cell_px * 1.5))
        lines = _long_lines(mask, line_masks=line_masks)
        strokes = cv2.bitwise_and(mask, cv2.bitwise_not(lines))
        _, labels, stats, _ = components(strokes)
        return mask, labels, stats, line_masks

    def _registration_to_lines(self, line_masks):
        """The homography that moves a flat grid's inner line crossings to where they belong
        (fitted to every crossing found, RANSAC), or None when too few are found, when it
        would not bring them closer (a curved page) or they lie within half a pixel already.
        A corner placed a few pixels off, or a frame line thickened by a shadow, leave walls
        inside the cells otherwise (the flag that makes a printed 1 a 7)."""
        found, ideal = _intersections(line_masks[0], line_masks[1], self.rows, self.cols)
        size_y, size_x = line_masks[0].shape
        if len(found) < GRID_MIN_CROSSINGS:
            return None
        # spread over the grid, not bunched in one corner (nothing would hold the rest)
        spread = found.max(axis=0) - found.min(axis=0)
        if spread[0] < GRID_CROSSINGS_SPREAD * size_x or spread[1] < GRID_CROSSINGS_SPREAD * size_y:
            return None
        correction, inliers = cv2.findHomography(
            found, ideal, cv2.RANSAC, GRID_CELL_SLACK * self.cell_px / 2.0
        )
        if correction is None or int(inliers.sum()) < GRID_MIN_CROSSINGS:
            return None
        before = np.hypot(*(found - ideal).T)
        moved = cv2.perspectiveTransform(found.reshape(-1, 1, 2), correction).reshape(-1, 2)
        after = np.hypot(*(moved - ideal).T)
        # a page that curves fits no homography: one that leaves any crossing worse is refused
        if not (np.percentile(after, 90) < np.percentile(before, 90) and after.max() <= before.max()):
            return None
        if (
            np.abs(cv2.perspectiveTransform(ideal.reshape(-1, 1, 2), correction).reshape(-1, 2) - ideal).max()
            < 0.5
        ):
            return None
        return correction

    def _pieces(self, boxes, labels, digit_box, x0, y0):
        """The ``labels`` (components with ``boxes``, overlapping the cell at ``x0``, ``y0``)
        that are pieces of the digit in ``digit_box`` (left, top, right, bottom). A piece lies
        inside the digit's box, give or take GRID_PART_REACH (a broken stroke); a wall's
        remnant only brushes it, or runs on beyond it (a line's blurred edge under a digit).
        Or it is a stroke the blur broke off (the foot of a 2, the bar of a 7): lying, not
        standing (a wall's remnant stands), clear of the cell's walls, within GRID_PART_REACH
        of the digit's box, the two together no bigger than a digit."""
        cell = self.cell_px
        left, top, right, bottom = digit_box
        x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        centre_x, centre_y = x + w / 2.0, y + h / 2.0
        reach = GRID_PART_REACH * cell
        within_box = (
            (left <= centre_x)
            & (centre_x <= right)
            & (top <= centre_y)
            & (centre_y <= bottom)
            & (x >= left - reach)
            & (x + w <= right + reach)
            & (y >= top - reach)
            & (y + h <= bottom + reach)
        )
        band = GRID_CELL_SLACK * cell
        broken_off = (
            (w >= h)
            & (x >= x0 + band)
            & (x + w <= x0 + cell - band)
            & (y >= y0 + band)
            & (y + h <= y0 + cell - band)
            & (x <= right + reach)
            & (x + w >= left - reach)
            & (y <= bottom + reach)
            & (y + h >= top - reach)
            & (np.maximum(bottom, y + h) - np.minimum(top, y) <= 0.95 * cell)
            & (np.maximum(right, x + w) - np.minimum(left, x) <= 0.95 * cell)
        )
        return labels[within_box | broken_off]

    def _cell_crop(self, flat, mask, labels, stats, x0, y0, core, paper_level, ink_bright=False):
        """The cell with only its digit's ink left: its ``core`` components (``_digit_cores``)
        with its pieces (``_pieces``: a broken stroke). Grid-line remnants, specks and a
        neighbour's overhang are painted as paper; a cell without a core comes out as blank
        paper of ``paper_level``."""
        cell = self.cell_px
        window = labels[y0 : y0 + cell, x0 : x0 + cell]
        core = [index for index in core or () if not _along_the_walls(window, index)]
        if not core:
            return np.full((cell, cell), paper_level, np.uint8)
        crop = flat[y0 : y0 + cell, x0 : x0 + cell].copy()
        cell_mask = mask[y0 : y0 + cell, x0 : x0 + cell]
        core_boxes = stats[core]
        left, top = core_boxes[:, 0].min(), core_boxes[:, 1].min()
        right = (core_boxes[:, 0] + core_boxes[:, 2]).max()
        bottom = (core_boxes[:, 1] + core_boxes[:, 3]).max()
        # only the components whose boxes overlap the cell (a handful, most often the core
        # alone) are looked at further
        x, y, w, h = stats[1:, 0], stats[1:, 1], stats[1:, 2], stats[1:, 3]
        near = np.flatnonzero((x < x0 + cell) & (x + w > x0) & (y < y0 + cell) & (y + h > y0)) + 1
        parts = np.zeros(len(stats), np.uint8)
        if len(near) > len(core):
            parts[self._pieces(stats[near], near, (left, top, right, bottom), x0, y0)] = 1
        parts[core] = 1
        keep = parts[window]
        # the blurred edges of grid lines escape the ink mask: outside the digit's box is paper
        ink_x, ink_y, ink_w, ink_h = cv2.boundingRect(keep)
        if ink_w == 0:  # components that only pass by the cell (their boxes overlap it)
            return np.full((cell, cell), paper_level, np.uint8)
        margin = max(2, cell // 16)
        inside = (
            slice(max(0, ink_y - margin), ink_y + ink_h + margin),
            slice(max(0, ink_x - margin), ink_x + ink_w + margin),
        )
        # what is painted out takes the paper's own local shade (a closing wider than any
        # stroke): one flat grey, a shade off, would leave a step that thresholding takes for ink
        side = max(3, (cell // 3) | 1)
        operation = cv2.MORPH_OPEN if ink_bright else cv2.MORPH_CLOSE
        paper = cv2.morphologyEx(crop, operation, cv2.getStructuringElement(cv2.MORPH_RECT, (side, side)))
        others = cv2.bitwise_and(cell_mask, cv2.bitwise_not(keep * 255))
        others = cv2.dilate(others, np.ones((3, 3), np.uint8), iterations=2)
        others[cv2.dilate(keep, np.ones((3, 3), np.uint8)) > 0] = 0
        outside = np.ones_like(keep)
        outside[inside] = 0
        painted = (others > 0) | (outside > 0)
        crop[painted] = paper[painted]
        return crop
