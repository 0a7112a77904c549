"""The stage chain for one image, in the one place that knows its order:

    roi -> preprocess -> backend -> postprocess -> compose

``prepare`` cuts the ROIs and turns them into tensors, ``infer`` runs any number of prepared
crops through the backend in one call, ``readings`` turns probabilities into readings, and
``frame_payload`` / ``read_still`` compose what is published or printed. The pipeline calls
these from its capture and inference threads (and batches across frames between them);
``predict``, ``POST /predict`` and the benchmarks read through the same Reader, built from
the same config, so every ROI and preprocessing setting reaches every entry point.
"""

import threading

import cv2
import numpy as np

from daemon import align, backends, postprocess, preprocess, roi

# A still is read at most this many pixels on its longer side: no mode needs more (the grid is
# searched at 800 px, numbers at 960 px, a crop at 128 px); boxes are scaled back.
MAX_STILL_SIDE = 2000
# A turned grid must read this much more confidently (mean top probability) to win.
UPRIGHT_MARGIN = 0.05


def second_look(backend, tensors, rows, below):
    """``rows`` (the backend's answers for ``tensors``) with every row whose likeliest class
    is under ``below`` replaced by the mean of its answer and the answers for six small
    variations of its tensor (``preprocess.tensor_variants``), all asked in one call of the
    backend's most exact model. A digit worn by blur or JPEG reads steadier; a sure crop
    costs nothing more."""
    rows = np.asarray(rows)
    if not below or not len(rows):
        return rows
    unsure = np.flatnonzero(rows.max(axis=1) < below)
    if not len(unsure):
        return rows
    variants = preprocess.tensor_variants(np.asarray(tensors)[unsure])
    answers = np.asarray(backend.infer_exact(variants))
    answers = answers.reshape(-1, len(unsure), rows.shape[1])
    rows = rows.copy()
    rows[unsure] = (rows[unsure] + answers.sum(axis=0)) / (len(answers) + 1.0)
    return rows


class PreparedImage(object):
    """An image's ROIs and their prepared crops (``outline``: the grid's corners, if found;
    ``roi_image``: the picture the ROIs are in, the frame registered to the reference when
    ``roi.align`` is on)."""

    __slots__ = ("rois", "prepared", "outline", "crop_count", "alignment", "roi_image")

    def __init__(self, rois, prepared, outline=None, alignment=None, roi_image=None):
        self.rois = rois
        self.prepared = prepared
        self.outline = outline
        self.alignment = alignment  # roi.align: the daemon.align report (ok, dx, dy, angle, score)
        self.crop_count = sum(1 for p in prepared if not p.empty)
        self.roi_image = roi_image


class Reader(object):
    """Reads digits in images with one backend and one set of ROI/preprocess/postprocess settings.

    ``lock`` (when given) is held around every backend call only, so a shared backend (the
    camera's, used by uploads too) is never busy while an image is decoded or preprocessed.
    ``second_look_below``: crops less sure than this get a ``second_look`` (0 = never;
    ``from_config`` takes ``postprocess.second_look_below``)."""

    def __init__(
        self, roi_settings, preprocess_params, min_confidence, backend=None, lock=None, second_look_below=0.0
    ):
        self.roi_settings = roi_settings
        self.params = preprocess_params
        self.min_confidence = min_confidence
        self.second_look_below = second_look_below
        self.backend = backend
        self.lock = lock if lock is not None else threading.Lock()
        self._params_by_polarity = {}
        self.extractor = self._extractor(roi_settings.mode)
        self.aligner = align.create(roi_settings.align) if hasattr(roi_settings, "align") else None

    @classmethod
    def from_config(cls, config, backend=None, lock=None, roi_settings=None):
        """A reader with ``config``'s settings (``roi_settings``: one camera's, default the
        config's ``roi``); loads the configured backend unless one is given."""
        if backend is None:
            backend = backends.load_backend(config.backend, config.batching.max_batch)
        return cls(
            roi_settings or config.roi,
            preprocess.PreprocessParams.from_config(config.preprocess),
            config.postprocess.min_confidence,
            backend,
            lock,
            config.postprocess.second_look_below,
        )

    def with_settings(self, config, roi_settings=None):
        """A reader on the same backend and lock with ``config``'s preprocessing settings and
        ``roi_settings`` (default the config's ``roi``)."""
        return Reader.from_config(config, self.backend, self.lock, roi_settings)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Release the backend."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    # -- the stages --------------------------------------------------------------------------
    def prepare(self, image, extractor=None):
        """ROIs -> crops -> tensors (no inference): what the capture thread does per frame.
        With ``roi.align`` a camera frame is first registered to the reference; one that
        cannot be has its ROIs prepared as empty (reported, not read)."""
        alignment = None
        if extractor is None and self.aligner is not None:
            aligned, alignment = self.aligner.align(image)
            if aligned is None:
                rois = self.extractor.extract(image)
                reason = "frame not aligned to the reference"
                return PreparedImage(
                    rois,
                    [preprocess.PreparedCrop(_blank(), True, reason) for _ in rois],
                    None,
                    alignment,
                    image,
                )
            image = aligned
        extractor = extractor or self.extractor
        outline = None
        if isinstance(extractor, roi.GridRoi):
            rois, outline = extractor.extract_grid(image)
        else:
            rois = extractor.extract(image)
        # a box clipped away by the frame edge (the ROI stage warns once) prepares as empty
        prepared = [preprocess.prepare(r.crop, self._params_for(r)) for r in rois]
        return PreparedImage(rois, prepared, outline, alignment, image)

    def _params_for(self, region):
        """The preprocess settings of one ROI: a box with its own polarity overrides the
        section's; a grid cell or a number's digit carries the polarity judged for its whole
        grid or page, which fills in for ``auto`` only."""
        polarity = region.polarity
        if polarity is None and self.params.polarity == "auto":
            polarity = region.judged_polarity
        if polarity is None or polarity == self.params.polarity:
            return self.params
        params = self._params_by_polarity.get(polarity)
        if params is None:
            values = dict(vars(self.params))
            values["polarity"] = polarity
            params = self._params_by_polarity[polarity] = preprocess.PreprocessParams(**values)
        return params

    def infer(self, prepared):
        """The non-empty prepared crops through the backend in one call; per crop, its
        probability vector, or None for an empty crop (which never reaches the model).

        A crop whose polarity was left open (``PreparedCrop.other``) is read both ways in the
        same call; the way read surer that it shows a digit (or a rolling drum) is kept, and
        the crop becomes that one (``take_other``: the debug view shows what was read)."""
        read = [p for p in prepared if not p.empty]
        if not read:
            return [None] * len(prepared)
        open_crops = [p for p in read if p.other is not None]
        tensors = np.stack([p.tensor for p in read] + [p.other.tensor for p in open_crops])
        with self.lock:
            rows = second_look(self.backend, tensors, self.backend.infer_all(tensors), self.second_look_below)
        by_crop = dict(zip(map(id, read), rows[: len(read)]))
        for crop, other_row in zip(open_crops, rows[len(read) :]):
            if postprocess.readable_confidence(other_row) > postprocess.readable_confidence(
                by_crop[id(crop)]
            ):
                crop.take_other()
                by_crop[id(crop)] = other_row
            else:
                crop.other = None
        return [None if p.empty else by_crop[id(p)] for p in prepared]

    def readings(self, image, probabilities):
        """A PreparedImage's probabilities -> RoiReadings (digit or none, confidence, box)."""
        return [
            postprocess.reading_for(region, row, self.min_confidence)
            for region, row in zip(image.rois, probabilities)
        ]

    def crop_confidences(self, crops):
        """preprocess -> backend for loose crops: the top probability of each (0 for an empty
        crop). Lets the segment ROI mode ask whether a wide blob is one digit or two."""
        probabilities = self.infer([preprocess.prepare(crop, self.params) for crop in crops])
        return [0.0 if p is None else postprocess.digit_confidence(p) for p in probabilities]

    @staticmethod
    def frame_payload(readings):
        """The reading part of a prediction message: ``rois``, ``number`` and, for grids, ``grid``."""
        payload = {"rois": [r.as_payload() for r in readings], "number": postprocess.compose_number(readings)}
        grid = postprocess.compose_grid(readings)
        if grid is not None:
            payload["grid"] = grid
        return payload

    # -- stills ------------------------------------------------------------------------------
    def read_still(self, image, roi_mode="center"):
        """Read a photo: the ``predict`` JSON object (``number``, ``digits``; ``grid`` and
        ``outline`` for grids). ``center`` reads the largest centred square as one digit,
        ``full`` the whole image whatever its shape; the other modes use this reader's ROI settings (grid size, region, boxes, max digits)."""
        gray = preprocess.to_gray(image)
        scale = min(1.0, float(MAX_STILL_SIDE) / max(gray.shape[:2]))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if roi_mode == "center":
            extractor = roi.CenterRoi(min(gray.shape[:2]))
        else:
            extractor = self._extractor(roi_mode, scale)
        prepared = self.prepare(gray, extractor)
        rows = self.infer(prepared.prepared)
        if roi_mode == "grid":
            prepared, rows = self._upright_grid(prepared, rows)
        readings = self.readings(prepared, rows)
        if roi_mode in ("center", "full") and not prepared.prepared[0].empty:
            # the ink inside the square, in image coordinates
            reading, ink_box = readings[0], prepared.prepared[0].ink_box
            reading.box = (reading.box[0] + ink_box[0], reading.box[1] + ink_box[1]) + tuple(ink_box[2:])
        return _still_result(readings, prepared.outline, scale)

    def _extractor(self, mode, scale=1.0):
        extractor = roi.create_extractor(self.roi_settings, mode, scale)
        if isinstance(extractor, roi.SegmentRoi):
            extractor.classifier = self.crop_confidences
        return extractor

    def _upright_grid(self, prepared, rows):
        """The grid's cells and probabilities turned so its digits stand upright.

        A photo of a sudoku may be taken sideways or upside down (and EXIF flags are often
        wrong): the digits are read in all four quarter turns and the turn with the most
        confident digits wins; cells move with it, boxes stay in image pixels."""
        filled = [index for index, p in enumerate(prepared.prepared) if not p.empty]
        if len(filled) < 3:
            return prepared, rows
        tensors = np.stack([prepared.prepared[i].tensor for i in filled])
        best_turn, best_score, best_rows = 0, _mean_confidence(rows[i] for i in filled), None
        for turn in (1, 2, 3):
            with self.lock:
                turned = self.backend.infer_all(np.ascontiguousarray(np.rot90(tensors, turn, axes=(1, 2))))
            score = _mean_confidence(turned)
            if score > best_score + UPRIGHT_MARGIN:
                best_turn, best_score, best_rows = turn, score, turned
        if best_turn == 0:
            return prepared, rows
        rows = list(rows)
        for index, probabilities in zip(filled, best_rows):
            rows[index] = probabilities
        regions = prepared.rois
        row_count = max(r.cell[0] for r in regions) + 1
        col_count = max(r.cell[1] for r in regions) + 1
        # where each cell lands when the grid is turned counter-clockwise like its digits
        places = np.rot90(np.arange(row_count * col_count).reshape(row_count, col_count), best_turn)
        position = {int(places[r, c]): (r, c) for r in range(places.shape[0]) for c in range(places.shape[1])}
        turned_regions = []
        for region in regions:
            row, col = position[region.cell[0] * col_count + region.cell[1]]
            turned_regions.append(roi.Roi("r%dc%d" % (row, col), region.box, region.crop, row, (row, col)))
        order = sorted(range(len(regions)), key=lambda i: turned_regions[i].cell)
        turned = PreparedImage(
            [turned_regions[i] for i in order], [prepared.prepared[i] for i in order], prepared.outline
        )
        return turned, [rows[i] for i in order]


def _blank():
    size = preprocess.INPUT_SIZE
    return np.zeros((size, size, 1), preprocess.INPUT_DTYPE)


def _mean_confidence(probability_rows):
    values = [postprocess.digit_confidence(p) for p in probability_rows if p is not None]
    return float(np.mean(values)) if values else 0.0


def _digit_entry(reading, scale, with_cell=False):
    entry = {
        "digit": reading.digit,
        "confidence": round(reading.confidence, 4),
        "box": [int(round(v / scale)) for v in reading.box],
    }
    if with_cell:
        entry["cell"] = list(reading.cell)
    return entry


def _still_result(readings, outline, scale):
    """Readings of a still (read at ``scale``) -> the predict JSON object, in image pixels."""
    grid = postprocess.compose_grid(readings)
    if grid is not None:
        return {
            "number": None,
            "digits": [_digit_entry(r, scale, with_cell=True) for r in readings if r.digit is not None],
            "grid": grid,
            "outline": None
            if outline is None
            else [[round(x / scale, 1), round(y / scale, 1)] for x, y in outline],
        }
    found = [r for r in readings if r.cell is not None or (r.confidence > 0 and not r.mark)]
    return {
        "number": postprocess.compose_number(found) if found else None,
        "digits": [_digit_entry(r, scale) for r in found if r.cell is None],
    }
