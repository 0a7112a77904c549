"""OpenCV VideoCapture sources: CSI (GStreamer), V4L2, RTSP/URI and video files."""

import logging
import os
import time

import cv2

from daemon.sources.base import FrameSource, SourceError

log = logging.getLogger(__name__)


def csi_pipeline(sensor_id, width, height, fps, flip_method):
    """GStreamer pipeline for a Jetson CSI camera, newest frame only, BGR for OpenCV."""
    return (
        "nvarguscamerasrc sensor-id={sensor} ! "
        "video/x-raw(memory:NVMM), width=(int){w}, height=(int){h}, framerate=(fraction){fps}/1 ! "
        "nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    ).format(sensor=sensor_id, w=width, h=height, fps=int(round(fps)), flip=flip_method)


def uri_pipeline(uri):
    """GStreamer pipeline for an RTSP/HTTP stream with low latency and newest-frame appsink."""
    return (
        "uridecodebin uri={uri} ! videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    ).format(uri=uri)


def has_gstreamer():
    """True when this OpenCV build can open GStreamer pipelines (JetPack's can, PyPI's cannot)."""
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if "GStreamer" in line:
            return "YES" in line
    return False


class CaptureSource(FrameSource):
    """Any source read through cv2.VideoCapture."""

    def __init__(self, settings):
        super().__init__(settings)
        self._capture = None
        self._kind = settings.type
        self.live = settings.type != "file" or settings.realtime
        self._frame_period = 1.0 / settings.fps if settings.fps else 0.0
        self._next_due = None
        self._frames_this_open = 0

    def describe(self):
        s = self.settings
        if self._kind == "file":
            return "file %s" % s.path
        if self._kind == "v4l2":
            return "v4l2 %s" % s.device
        if self._kind == "csi":
            return "csi sensor %d" % s.sensor_id
        return "%s stream" % self._kind  # addresses may carry credentials: not logged

    def _open_args(self):
        s = self.settings
        if s.pipeline:
            return (s.pipeline, cv2.CAP_GSTREAMER)
        if self._kind == "file":
            return (s.path, cv2.CAP_ANY)
        if self._kind == "csi":
            return (csi_pipeline(s.sensor_id, s.width, s.height, s.fps, s.flip_method), cv2.CAP_GSTREAMER)
        if self._kind == "v4l2":
            return (s.device, cv2.CAP_V4L2)
        if has_gstreamer():
            return (uri_pipeline(s.uri), cv2.CAP_GSTREAMER)
        return (s.uri, cv2.CAP_FFMPEG)

    def _open(self):
        target, api = self._open_args()
        if self._kind == "file" and not os.path.isfile(target):
            raise SourceError("video file %s does not exist" % target)
        if api == cv2.CAP_GSTREAMER and not has_gstreamer():
            raise SourceError(
                "this OpenCV has no GStreamer support (needed for %s); on the Jetson use JetPack's "
                "python3-opencv, not the PyPI wheel" % self._kind
            )
        capture = cv2.VideoCapture(target, api)
        if not capture.isOpened():
            capture.release()
            raise SourceError("cannot open %s" % self.describe())
        if self._kind == "v4l2":
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.settings.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.settings.height)
            capture.set(cv2.CAP_PROP_FPS, self.settings.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self._kind == "file":
            ok, first = capture.read()
            if not ok or first is None:
                capture.release()
                raise SourceError("%s: no decodable video frame (corrupt or not a video?)" % target)
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            file_fps = capture.get(cv2.CAP_PROP_FPS)
            if self.settings.realtime and file_fps and 0 < file_fps < 1000:
                self._frame_period = 1.0 / file_fps
        self._capture = capture
        self._frames_this_open = 0
        self._next_due = None

    def _read_image(self):
        capture = self._capture
        if capture is None:
            raise SourceError("not open")
        ok, image = capture.read()
        if ok and image is not None:
            self._frames_this_open += 1
            return image
        if self._kind == "file":
            # Reopening a file that ends early would only replay its readable part: it has ended.
            total = capture.get(cv2.CAP_PROP_FRAME_COUNT)
            if self._frames_this_open == 0:
                log.warning("%s: no frame could be read (file truncated or corrupt)", self.describe())
            elif total > 0 and self._frames_this_open < total - 1:
                log.warning(
                    "%s: ended early, read failed at frame %d of %d (file truncated or corrupt)",
                    self.describe(),
                    self._frames_this_open,
                    int(total),
                )
            return None
        raise SourceError("camera/stream returned no frame")

    def _release(self):
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def _abandon(self):
        self._capture = None

    def _pace(self):
        if self._kind != "file" or not self._frame_period:
            return
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > 1.0:
            self._next_due = now
        self._next_due += self._frame_period
        delay = self._next_due - now
        if delay > 0:
            self._stop.wait(delay)
