"""HTTP: /healthz, /metrics, /snapshot.jpg, /stream.mjpg, / (upload page), POST /predict, and
the setup page with its API (/setup, /api/config, /api/preview, /api/reference: daemon.setup_api).

Standard library server (threaded), so it runs on the Nano's Python 3.6 with no
web framework. Each path is a small handler function in a routing table; handlers
talk to the pipeline only through its documented interface (daemon.pipeline).
Nothing a client sends can stop the daemon: every request's errors become 4xx/5xx.
"""

import email.parser
import html
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

import cv2
import numpy as np

from daemon import setup_api
from daemon.predict import ImageError, decode_image

log = logging.getLogger(__name__)

BOUNDARY = "digitdframe"
MAX_MULTIPART_PARTS = 16  # an upload form has one file and perhaps a few fields
MAX_CONCURRENT_UPLOADS = 2  # more are answered 503 with Retry-After: the camera comes first
UPLOAD_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "upload.html")
STILL_ROI_MODES = ("center", "full", "segment", "grid", "boxes")  # full: a meter digit photo


class UploadsBusy(Exception):
    """As many uploads as allowed are being read already."""


def annotate(view):
    """Draw ROI boxes, digits and the model's 28x28 input for each ROI onto a copy of the
    picture the ROIs are in (the frame registered to the reference when ``roi.align`` is on)."""
    image = view.roi_image.copy()
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = max(1.0, image.shape[0] / 480.0)
    thickness = max(1, int(2 * scale))
    for region, item, reading in zip(view.rois, view.prepared, view.readings):
        x, y, w, h = region.box
        found = reading.digit is not None
        colour = (40, 170, 40) if found else (30, 30, 220)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
        label = "%s %.2f" % (reading.digit, reading.confidence) if found else "no digit"
        cv2.putText(
            image, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour, thickness
        )
        tile = int(84 * scale)
        model_input = (item.tensor[:, :, 0] * 255).astype(np.uint8)
        model_input = cv2.resize(model_input, (tile, tile), interpolation=cv2.INTER_NEAREST)
        tx, ty = min(x + w + 4, image.shape[1] - tile), min(y, image.shape[0] - tile)
        if tx >= 0 and ty >= 0:
            image[ty : ty + tile, tx : tx + tile] = cv2.cvtColor(model_input, cv2.COLOR_GRAY2BGR)
            cv2.rectangle(image, (tx, ty), (tx + tile, ty + tile), (200, 200, 200), 1)
    label = "frame %d" % view.frame.index
    origin = (8, image.shape[0] - 10)
    cv2.putText(image, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 160), max(1, int(scale)))
    return image


def encode_jpeg(image, quality=80):
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


# (name, kind, help, snapshot key) of each metric rendered from the stats snapshot
METRICS = (
    ("digitd_frames_in", "counter", "Frames taken from the source", "frames_in"),
    ("digitd_frames_out", "counter", "Frames whose prediction was published", "frames_out"),
    ("digitd_frames_dropped", "counter", "Frames the grabber dropped (newest wins)", "dropped_frames"),
    ("digitd_frame_errors", "counter", "Frames that failed in ROI/preprocess", "frame_errors"),
    ("digitd_inference_errors", "counter", "Failed inference batches", "inference_errors"),
    ("digitd_source_reconnects", "counter", "Source reopen attempts", "source_reconnects"),
    ("digitd_queue_depth", "gauge", "Frames waiting for inference", "queue_depth"),
    ("digitd_mqtt_queue", "gauge", "MQTT messages not yet acknowledged", "mqtt_queue"),
    ("digitd_mqtt_dropped", "counter", "MQTT messages dropped from a full outbox", "mqtt_dropped"),
    ("digitd_mqtt_connected", "gauge", "1 while connected to the broker", "mqtt_connected"),
)
HISTOGRAMS = (
    ("digitd_latency_seconds", "Capture to publish latency", "latency_buckets", "latency_sum_s"),
    ("digitd_batch_size", "Crops per inference call", "batch_buckets", "batch_sum"),
)


class SnapshotCollector(object):
    """A prometheus_client collector that yields one stats snapshot's values."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        families = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
        for name, kind, text, key in METRICS:
            yield families[kind](name, text, value=float(self.snapshot[key] or 0))
        for name, text, buckets, total in HISTOGRAMS:
            yield HistogramMetricFamily(
                name, text, buckets=self.snapshot[buckets], sum_value=self.snapshot[total]
            )


def metrics_text(snapshot):
    """Prometheus exposition text of a stats snapshot (raises ImportError without prometheus_client)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


class Response(object):
    """What a handler answers: status, body (bytes, str or JSON-able), content type, headers."""

    def __init__(self, status, body, content_type="application/json", headers=None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def error(status, message, headers=None):
    return Response(status, {"error": message}, headers=headers)


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``max_connections`` at a time."""

    daemon_threads = True
    allow_reuse_address = True
    BUSY = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 33\r\n"
        b'Connection: close\r\n\r\n{"error": "too many connections"}'
    )

    def __init__(self, address, handler, max_connections):
        self._slots = threading.BoundedSemaphore(max_connections)
        self._busy_logged = False
        HTTPServer.__init__(self, address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            if not self._busy_logged:
                log.warning("HTTP: connection limit reached; answering 503 to new connections")
                self._busy_logged = True
            try:
                request.sendall(self.BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            socketserver.ThreadingMixIn.process_request(self, request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            self._slots.release()


class WebServer(object):
    """Owns the HTTP server thread; handlers read the pipeline, never block it. ``config_path``
    is the file the setup API saves to (None: the config cannot be changed over HTTP)."""

    def __init__(self, settings, pipeline, config_path=None):
        self.settings = settings
        self.pipeline = pipeline
        self.config_path = config_path
        self.streams = threading.BoundedSemaphore(settings.max_streams)
        self.uploads = threading.BoundedSemaphore(MAX_CONCURRENT_UPLOADS)
        self.stopping = threading.Event()
        self._server = None
        self._thread = None

    @property
    def port(self):
        return self._server.server_address[1]

    def start(self):
        server = _Server((self.settings.bind, self.settings.port), Handler, self.settings.max_connections)
        server.web = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("HTTP on http://%s:%d/", self.settings.bind, self.port)
        return self

    def stop(self):
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def predict(self, data, roi_mode="center"):
        """Read an upload. At most MAX_CONCURRENT_UPLOADS at once (UploadsBusy beyond), and the
        backend is held only while it runs, so the camera keeps its frame rate."""
        if not self.uploads.acquire(False):
            raise UploadsBusy("%d uploads are being read; try again shortly" % MAX_CONCURRENT_UPLOADS)
        try:
            image = decode_image(data, max_pixels=self.settings.max_pixels)
            return self.pipeline.read_still(image, roi_mode)
        finally:
            self.uploads.release()


# -- handlers: (web, request) -> Response, or None when they answered themselves ------------
def get_health(web, request):
    healthy, detail = web.pipeline.health()
    return Response(200 if healthy else 503, detail)


def get_metrics(web, request):
    try:
        text = metrics_text(web.pipeline.stats_snapshot())
    except ImportError:
        return error(501, "prometheus_client is not installed")
    return Response(200, text, "text/plain; version=0.0.4; charset=utf-8")


def get_snapshot(web, request):
    """The newest frame with its ROIs drawn; ``?source=<id>`` picks a camera (default the
    first); ``?raw=1``: the picture without drawing, in the pixels the ROIs are drawn in (with
    ``roi.align``, the frame registered to the reference, so boxes drawn on it stay put)."""
    try:
        view = web.pipeline.latest_view(setup_api.query_value(request, "source"))
    except KeyError as exc:
        return error(404, exc.args[0])
    if view is None:
        return error(503, "no frame yet")
    raw = setup_api.query_value(request, "raw") == "1"
    image = view.roi_image if raw else annotate(view)
    return Response(200, encode_jpeg(image), "image/jpeg", {"X-Frame-Index": str(view.frame.index)})


def get_upload_page(web, request):
    with open(UPLOAD_PAGE, "rb") as handle:
        page = handle.read().decode("utf-8")
    page = page.replace("{{device}}", html.escape(web.pipeline.config.device_id))
    return Response(200, page, "text/html; charset=utf-8")


def get_stream(web, request):
    """MJPEG of the annotated frames at most ``http.stream_fps`` (``?source=<id>`` picks a
    camera); answers by itself."""
    source_id = setup_api.query_value(request, "source")
    if source_id is not None and source_id not in web.pipeline.source_ids():
        return error(404, "no source %r" % source_id)
    if not web.streams.acquire(blocking=False):
        return error(503, "too many stream clients (max %d)" % web.settings.max_streams)
    try:
        request.send_response(200)
        request.send_header("Content-Type", "multipart/x-mixed-replace; boundary=%s" % BOUNDARY)
        request.send_header("Cache-Control", "no-store")
        request.send_header("Connection", "close")
        request.end_headers()
        request.close_connection = True
        period = 1.0 / web.settings.stream_fps
        last_index = None
        while not web.stopping.is_set():
            view = web.pipeline.latest_view(source_id)
            if view is not None and view.frame.index != last_index:
                last_index = view.frame.index
                data = encode_jpeg(annotate(view))
                head = "--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (
                    BOUNDARY,
                    len(data),
                )
                request.wfile.write(head.encode("ascii") + data + b"\r\n")
                request.wfile.flush()
            time.sleep(period)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    finally:
        web.streams.release()
    return None


def post_predict(web, request):
    """An image in the body (raw or multipart); ``?roi=center|segment|grid|boxes``."""
    roi_mode = setup_api.query_value(request, "roi", "center")
    if roi_mode not in STILL_ROI_MODES:
        return error(400, "roi must be one of %s, not %r" % (", ".join(STILL_ROI_MODES), roi_mode))
    try:
        body = setup_api.read_body(web, request)
    except setup_api.Refused as refused:
        return error(refused.status, str(refused))
    content_type = request.headers.get("Content-Type", "")
    try:
        data = _parse_multipart(content_type, body) if content_type.startswith("multipart/") else body
        return Response(200, web.predict(data, roi_mode))
    except UploadsBusy as exc:
        return error(503, str(exc), {"Retry-After": "1"})
    except ImageError as exc:
        return error(400, str(exc))


def get_setup_page(web, request):
    return Response(200, setup_api.setup_page(web), "text/html; charset=utf-8")


def _api(function):
    """A setup_api function (web, request) -> JSON-able body as a handler; its Refused -> 4xx/5xx."""

    def handler(web, request):
        try:
            return Response(200, function(web, request))
        except setup_api.Refused as refused:
            body = {"error": str(refused)}
            if refused.errors is not None:
                body["errors"] = refused.errors
            return Response(refused.status, body, headers=refused.headers)

    return handler


ROUTES = {
    ("GET", "/healthz"): get_health,
    ("GET", "/metrics"): get_metrics,
    ("GET", "/snapshot.jpg"): get_snapshot,
    ("GET", "/stream.mjpg"): get_stream,
    ("GET", "/"): get_upload_page,
    ("GET", "/index.html"): get_upload_page,
    ("POST", "/predict"): post_predict,
    ("GET", "/setup"): get_setup_page,
    ("GET", "/api/config"): _api(setup_api.get_config),
    ("PUT", "/api/config"): _api(setup_api.put_config),
    ("GET", "/api/preview"): _api(setup_api.get_preview),
    ("POST", "/api/preview"): _api(setup_api.post_preview),
    ("POST", "/api/reference"): _api(setup_api.post_reference),
}


def _parse_multipart(content_type, body):
    """Return the bytes of the first file part of a multipart/form-data body."""
    # The email parser spends seconds of CPU on a body of a million empty parts: count them first.
    boundary = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if boundary is None:
        raise ImageError("multipart body without a boundary")
    if body.count(b"--" + boundary.group(1).strip().encode("latin-1")) > MAX_MULTIPART_PARTS + 1:
        raise ImageError("too many parts in the multipart body (at most %d)" % MAX_MULTIPART_PARTS)
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ImageError("malformed multipart body")
    for part in message.get_payload():
        if part.get_filename() is not None or part.get_param("name", header="content-disposition") in (
            "image",
            "file",
        ):
            return part.get_payload(decode=True) or b""
    raise ImageError("no file in the upload (field 'image')")


class Handler(BaseHTTPRequestHandler):
    """Dispatches each request through ROUTES; the server's ``web`` is the WebServer."""

    server_version = "digitd"
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.web.settings.idle_timeout_s  # idle keep-alive connections are closed
        BaseHTTPRequestHandler.setup(self)

    def log_message(self, fmt, *args):
        log.debug("http %s: " + fmt, self.client_address[0], *args)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    def _dispatch(self, method):
        path = urlsplit(self.path).path
        handler = ROUTES.get((method, path))
        try:
            if handler is None:
                response = error(404, "not found: %s" % path)
            else:
                response = handler(self.server.web, self)
            if response is not None:
                self._send(response)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a request must never take the daemon down
            log.exception("%s %s failed", method, path)
            self._send(error(500, "internal error: %s" % exc))

    def _send(self, response):
        body = response.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
