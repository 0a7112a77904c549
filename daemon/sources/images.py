"""Image folder / glob source: every readable image in name order."""

import glob
import logging
import os

import cv2

from daemon.sources.base import FrameSource, SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class ImageFolderSource(FrameSource):
    """Reads a folder (its images) or a glob pattern; unreadable files are skipped and counted."""

    def __init__(self, settings):
        super().__init__(settings)
        self._files = []
        self._position = 0

    def describe(self):
        return "images %s" % self.settings.path

    def _open(self):
        path = self.settings.path
        if os.path.isdir(path):
            names = [os.path.join(path, n) for n in os.listdir(path)]
        else:
            names = glob.glob(path)
        self._files = sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))
        if not self._files:
            raise SourceError("no images (%s) in %s" % (", ".join(IMAGE_SUFFIXES), path))
        self._position = 0

    def _read_image(self):
        while self._position < len(self._files):
            name = self._files[self._position]
            self._position += 1
            image = cv2.imread(name, cv2.IMREAD_COLOR)
            if image is not None:
                return image
            self._note_failure(SourceError("unreadable image %s" % name))
            log.warning("skipping unreadable image %s", name)
        return None

    def _release(self):
        self._position = len(self._files)
