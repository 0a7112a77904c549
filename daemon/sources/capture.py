"""OpenCV VideoCapture sources: CSI (GStreamer), V4L2, RTSP/URI and video files.

Opening a live source runs in a worker thread for at most OPEN_TIMEOUT_S: cv2.VideoCapture
blocks forever on a GStreamer pipeline whose camera is busy or whose elements are missing,
so a pipeline's elements are also looked up first and a missing one is named at once.
"""

import logging
import os
import shutil
import subprocess
import threading
import time
from fractions import Fraction

import cv2

from daemon.sources.base import FrameSource, SourceError

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0  # a live source that has not opened by then is reported (and retried)
JETSON_ELEMENTS = ("nvarguscamerasrc", "nvvidconv")


def csi_pipeline(sensor_id, width, height, fps, flip_method):
    """GStreamer pipeline for a Jetson CSI camera, newest frame only, in grey.

    nvvidconv converts to GRAY8 in the VIC hardware, so the Nano's CPU does no colour
    conversion at all (the daemon reads in grey; the debug view shows grey too). For colour,
    set source.pipeline (BGRx from nvvidconv, then videoconvert to BGR on the CPU: about
    one A57 core at 1280x720, 30 fps)."""
    rate = Fraction(fps).limit_denominator(1000)
    return (
        "nvarguscamerasrc sensor-id={sensor} ! "
        "video/x-raw(memory:NVMM), width=(int){w}, height=(int){h}, framerate=(fraction){num}/{den} ! "
        "nvvidconv flip-method={flip} ! video/x-raw, format=(string)GRAY8 ! "
        "appsink drop=true max-buffers=1 sync=false"
    ).format(sensor=sensor_id, w=width, h=height, num=rate.numerator, den=rate.denominator, flip=flip_method)


def pipeline_elements(pipeline):
    """Element names of a gst-launch style pipeline (caps and pad references left out)."""
    names = []
    for part in pipeline.split("!"):
        words = part.split()
        if not words:
            continue
        name = words[0]
        if "/" in name or "." in name or "=" in name or "(" in name:
            continue  # caps (video/x-raw), a pad reference (t.) or a property of a named element
        names.append(name)
    return names


_element_cache = {}


def gstreamer_element_exists(name):
    """True/False when GStreamer can be asked (python3-gi or gst-inspect-1.0), None when not."""
    if name in _element_cache:
        return _element_cache[name]
    found = None
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        found = Gst.ElementFactory.find(name) is not None
    except (ImportError, ValueError):
        inspect = shutil.which("gst-inspect-1.0")
        if inspect:
            try:
                found = subprocess.call([inspect, "--exists", name], timeout=10) == 0
            except (OSError, subprocess.SubprocessError) as exc:
                log.debug("gst-inspect-1.0 --exists %s: %s", name, exc)
    _element_cache[name] = found
    return found


def missing_elements(pipeline):
    return [name for name in pipeline_elements(pipeline) if gstreamer_element_exists(name) is False]


def open_capture(target, api, timeout, what):
    """cv2.VideoCapture(target, api) in a worker thread; SourceError when it takes longer than
    ``timeout`` (the thread is abandoned, and releases the capture should it open later)."""
    state = {"capture": None, "error": None, "abandoned": False}
    lock = threading.Lock()
    done = threading.Event()

    def worker():
        capture = error = None
        try:
            capture = cv2.VideoCapture(target, api)
        except cv2.error as exc:
            error = exc
        with lock:
            if state["abandoned"]:
                if capture is not None:
                    capture.release()
                return
            state["capture"], state["error"] = capture, error
        done.set()

    thread = threading.Thread(target=worker, name="open-%s" % what.replace(" ", "-"))
    thread.daemon = True
    thread.start()
    done.wait(timeout)
    with lock:
        if not done.is_set():
            state["abandoned"] = True
            raise SourceError(
                "opening %s did not finish within %.0f s (camera busy, or a pipeline that never "
                "starts?)" % (what, timeout)
            )
    if state["error"] is not None:
        raise SourceError("cannot open %s: %s" % (what, state["error"]))
    return state["capture"]


def uri_pipeline(uri):
    """GStreamer pipeline for an RTSP/HTTP stream with low latency and newest-frame appsink."""
    return (
        "uridecodebin uri={uri} ! videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    ).format(uri=uri)


def has_gstreamer(build_information=None):
    """True when this OpenCV build can open GStreamer pipelines (JetPack's can, PyPI's cannot).

    OpenCV 4 prints ``GStreamer: YES (1.14.5)``; OpenCV 3 prints ``GStreamer:`` and then
    ``base: YES (ver 1.14.5)`` on the next line."""
    lines = (build_information or cv2.getBuildInformation()).splitlines()
    for number, line in enumerate(lines):
        label, _, value = line.partition(":")
        if label.strip() != "GStreamer":
            continue
        if value.strip():
            return value.strip().startswith("YES")
        for following in lines[number + 1 : number + 4]:
            key, _, answer = following.partition(":")
            if key.strip() == "base":
                return answer.strip().startswith("YES")
        return False
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
                "OpenCV (apt package libopencv-python), not the PyPI wheel" % self._kind
            )
        if api == cv2.CAP_GSTREAMER:
            missing = missing_elements(target)
            if missing:
                hint = ""
                if set(missing) & set(JETSON_ELEMENTS):
                    hint = " (%s come with JetPack on a Jetson; a CSI camera needs them)" % (
                        " and ".join(JETSON_ELEMENTS)
                    )
                raise SourceError(
                    "cannot open %s: GStreamer element %s not found%s"
                    % (self.describe(), ", ".join(missing), hint)
                )
        if self._kind == "file":
            capture = cv2.VideoCapture(target, api)
        else:
            capture = open_capture(target, api, OPEN_TIMEOUT_S, self.describe())
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
