"""Regions of interest: frame -> list of Roi (id, box, crop).

Every mode is a class with ``extract(image) -> [Roi]``; ``create_extractor``
picks it by name. Modes that find digits themselves (segment, grid) return the
same Roi objects with ``line`` set, so the pipeline never changes.
"""

import logging

log = logging.getLogger(__name__)


class Roi(object):
    """One crop to classify. ``box`` is (x, y, w, h) in frame pixels; ``line`` groups digits."""

    __slots__ = ("id", "box", "crop", "line")

    def __init__(self, roi_id, box, crop, line=0):
        self.id = roi_id
        self.box = box
        self.crop = crop
        self.line = line


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


class BoxesRoi(object):
    """A fixed list of boxes with ids, clipped to the frame."""

    def __init__(self, boxes):
        self.boxes = [(b.id, (b.x, b.y, b.w, b.h)) for b in boxes]
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
            rois.append(Roi(roi_id, clipped, crop_box(image, clipped)))
        return rois


def create_extractor(settings):
    """Extractor for the ``roi`` config section."""
    if settings.mode == "center":
        return CenterRoi(settings.size)
    if settings.mode == "boxes":
        return BoxesRoi(settings.boxes)
    raise ValueError("unknown ROI mode %r" % settings.mode)
