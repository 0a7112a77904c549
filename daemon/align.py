"""Register each frame to a saved reference frame before the ROIs are cut (``roi.align``).

The user saves a frame in which the boxes sit on the digits (``roi.align.reference``, the
boxes are in its pixels). A camera that was knocked, or vibrates, then still crops the right
digits: each frame's shift is found by phase correlation (robust to large shifts), refined
by ECC (OpenCV's enhanced correlation coefficient, translation and rotation) on a small
copy, and the frame is warped into the reference's coordinates. A frame whose correlation
with the reference stays below ``min_score`` (another scene, a covered lens, darkness) is
reported as not aligned and not read.
"""

import logging
import math

import cv2
import numpy as np

from daemon.preprocess import to_gray

log = logging.getLogger(__name__)

WORK_SIDE = 480  # registration runs on a copy this large: shifts of a few pixels still show
PYRAMID = (0.5, 1.0)  # ECC runs coarse to fine: large shifts and turns, then the detail


class AlignmentError(Exception):
    """The reference frame cannot be loaded."""


class Aligner(object):
    """Aligns frames to one reference image (gray or BGR array)."""

    def __init__(self, reference, min_score=0.6, max_shift_fraction=0.25):
        gray = to_gray(reference)
        self.height, self.width = gray.shape
        self.scale = min(1.0, float(WORK_SIDE) / max(gray.shape))
        self.reference = self._small(gray)
        self.levels = {
            factor: cv2.resize(self.reference, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            for factor in PYRAMID
        }
        self.window = cv2.createHanningWindow(self.reference.shape[::-1], cv2.CV_32F)
        self.min_score = min_score
        self.max_shift_fraction = max_shift_fraction

    def _small(self, gray):
        if gray.shape != (self.height, self.width):
            gray = cv2.resize(gray, (self.width, self.height), interpolation=cv2.INTER_AREA)
        small = cv2.resize(gray, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small.astype(np.float32), (5, 5), 0)

    def align(self, image):
        """(the frame in the reference's coordinates or None, a report dict): ``ok``, the
        frame's shift ``dx``/``dy`` in reference pixels, its ``angle`` in degrees, ``score``."""
        small = self._small(to_gray(image))
        # copies: OpenCV's phaseCorrelate applies the window to its float inputs in place
        (dx, dy), _ = cv2.phaseCorrelate(self.reference.copy(), small.copy(), self.window)
        limit = self.max_shift_fraction * max(small.shape)
        if math.hypot(dx, dy) > limit:
            dx, dy = 0.0, 0.0  # an implausible shift: let ECC start from none
        warp = np.float32([[1, 0, dx], [0, 1, dy]])
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-4)
        # coarse to fine: a half, then the whole working copy. ECC raises when an iteration
        # lowers the correlation, which happens at the optimum too: that level's start stays.
        for factor in PYRAMID:
            reference = self.levels[factor]
            level = (
                small
                if factor == 1.0
                else cv2.resize(small, reference.shape[::-1], interpolation=cv2.INTER_AREA)
            )
            level_warp = warp.copy()
            level_warp[:, 2] *= factor
            try:
                _, level_warp = cv2.findTransformECC(
                    reference, level, level_warp, cv2.MOTION_EUCLIDEAN, criteria, None, 5
                )
            except cv2.error as exc:
                log.debug("ECC at %.2f stopped early: %s", factor, str(exc).strip()[-80:])
                continue
            warp = level_warp.copy()
            warp[:, 2] /= factor
        score = self._correlation(small, warp)
        if score < self.min_score:
            return None, self._report(
                False,
                warp,
                score,
                "correlation %.2f below %.2f: not the reference scene" % (score, self.min_score),
            )
        full = warp.copy()
        full[:, 2] /= self.scale
        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        aligned = cv2.warpAffine(
            image,
            full,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return aligned, self._report(True, warp, score)

    def _correlation(self, small, warp):
        """Zero-mean normalised correlation of the registered copy with the reference."""
        height, width = self.reference.shape
        registered = cv2.warpAffine(
            small,
            warp,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        a = self.reference - float(np.mean(self.reference))
        b = registered - float(np.mean(registered))
        norm = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
        return float(np.sum(a * b)) / norm if norm > 0 else 0.0

    def _report(self, ok, warp, score, reason=""):
        report = {
            "ok": ok,
            "dx": round(float(warp[0, 2]) / self.scale, 1),
            "dy": round(float(warp[1, 2]) / self.scale, 1),
            "angle": round(math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0]))), 2),
            "score": round(float(score), 3),
        }
        if reason:
            report["reason"] = reason
        return report


def create(settings):
    """The Aligner of a ``roi.align`` section, or None when it names no reference."""
    if not settings.reference:
        return None
    image = cv2.imread(settings.reference, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise AlignmentError("roi.align.reference: cannot read an image from %s" % settings.reference)
    return Aligner(image, settings.min_score)
