"""HTTP: /healthz, /metrics, /snapshot.jpg, /stream.mjpg, / (upload page) and POST /predict.

Standard library server (threaded), so it runs on the Nano's Python 3.6 with no
web framework. Nothing a client sends can stop the daemon: every handler catches
its own errors and answers 4xx/5xx.
"""

import email.parser
import json
import logging
import re
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import cv2
import numpy as np

from daemon.predict import ImageError, decode_image

log = logging.getLogger(__name__)

BOUNDARY = "digitdframe"
MAX_MULTIPART_PARTS = 16  # an upload form has one file and perhaps a few fields
MAX_CONCURRENT_UPLOADS = 2  # more are answered 503 with Retry-After: the camera comes first


class UploadsBusy(Exception):
    """As many uploads as allowed are being read already."""


def annotate(view):
    """Draw ROI boxes, digits and the model's 28x28 input for each ROI onto a copy of the frame."""
    frame, rois, prepared, readings = view
    image = frame.image.copy()
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    scale = max(1.0, image.shape[0] / 480.0)
    for region, item, reading in zip(rois, prepared, readings):
        x, y, w, h = region.box
        found = reading.digit is not None
        colour = (40, 170, 40) if found else (30, 30, 220)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, max(1, int(2 * scale)))
        label = "%s %.2f" % (reading.digit, reading.confidence) if found else "no digit"
        cv2.putText(image, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour,
                    max(1, int(2 * scale)))  # fmt: skip
        tile = int(84 * scale)
        model_input = cv2.resize((item.tensor[:, :, 0] * 255).astype(np.uint8), (tile, tile),
                                 interpolation=cv2.INTER_NEAREST)  # fmt: skip
        tx, ty = min(x + w + 4, image.shape[1] - tile), min(y, image.shape[0] - tile)
        if tx >= 0 and ty >= 0:
            image[ty : ty + tile, tx : tx + tile] = cv2.cvtColor(model_input, cv2.COLOR_GRAY2BGR)
            cv2.rectangle(image, (tx, ty), (tx + tile, ty + tile), (200, 200, 200), 1)
    cv2.putText(image, "frame %d" % frame.index, (8, image.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * scale, (0, 0, 160), max(1, int(scale)))  # fmt: skip
    return image


def encode_jpeg(image, quality=80):
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def metrics_text(pipeline):
    """Prometheus exposition text, built at scrape time from the pipeline's counters."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class PipelineCollector(object):
        def collect(self):
            stats = pipeline.stats
            source = pipeline.source.stats if pipeline.source is not None else None
            publisher = pipeline.publisher
            yield CounterMetricFamily(
                "digitd_frames_in", "Frames taken from the source", value=stats.frames_in
            )
            yield CounterMetricFamily("digitd_frames_out", "Frames whose prediction was published",
                                      value=stats.frames_out)  # fmt: skip
            yield CounterMetricFamily("digitd_frames_dropped", "Frames the grabber dropped (newest wins)",
                                      value=source.dropped if source else 0)  # fmt: skip
            yield CounterMetricFamily("digitd_frame_errors", "Frames that failed in ROI/preprocess",
                                      value=stats.frame_errors)  # fmt: skip
            yield CounterMetricFamily("digitd_inference_errors", "Failed inference batches",
                                      value=stats.inference_errors)  # fmt: skip
            yield CounterMetricFamily("digitd_source_reconnects", "Source reopen attempts",
                                      value=source.reconnects if source else 0)  # fmt: skip
            yield GaugeMetricFamily(
                "digitd_queue_depth", "Frames waiting for inference", value=pipeline.batcher.depth()
            )
            yield GaugeMetricFamily("digitd_mqtt_queue", "MQTT messages not yet acknowledged",
                                    value=publisher.pending() if publisher else 0)  # fmt: skip
            yield CounterMetricFamily("digitd_mqtt_dropped", "MQTT messages dropped from a full outbox",
                                      value=publisher.stats.dropped if publisher else 0)  # fmt: skip
            yield GaugeMetricFamily("digitd_mqtt_connected", "1 while connected to the broker",
                                    value=1 if publisher is not None and publisher.stats.connected else 0)  # fmt: skip
            latency = stats.latency_buckets
            yield HistogramMetricFamily("digitd_latency_seconds", "Capture to publish latency",
                                        buckets=latency.cumulative(), sum_value=latency.total)  # fmt: skip
            batches = stats.batch_buckets
            yield HistogramMetricFamily("digitd_batch_size", "Crops per inference call",
                                        buckets=batches.cumulative(), sum_value=batches.total)  # fmt: skip

    registry = CollectorRegistry()
    registry.register(PipelineCollector())
    return generate_latest(registry)


UPLOAD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>digitd: read a digit</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} .row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
#preview{max-width:320px;max-height:320px;border:1px solid #ccc;display:none}
#result{font-size:1.1em} #number{font-size:3em;font-weight:700;letter-spacing:.1em}
.err{color:#b00} table{border-collapse:collapse} td,th{padding:.2em .6em;border-bottom:1px solid #eee}
img.snap{max-width:100%%;border:1px solid #ccc}
</style></head><body>
<h1>digitd on %(device)s</h1>
<p>Upload a photo of a handwritten digit (dark ink on light paper or light on dark, any size).</p>
<form id="form"><input type="file" id="file" name="image" accept="image/*"> <button type="submit" id="send">Read</button></form>
<div class="row"><img id="preview" alt="uploaded image"><div id="result"></div></div>
<h2>Camera</h2><p><a href="/stream.mjpg">live stream</a> &middot; <a href="/snapshot.jpg">snapshot</a>
&middot; <a href="/healthz">health</a> &middot; <a href="/metrics">metrics</a></p>
<script>
const form = document.getElementById('form'), file = document.getElementById('file');
const preview = document.getElementById('preview'), result = document.getElementById('result');
file.addEventListener('change', () => { if (file.files[0]) { preview.src = URL.createObjectURL(file.files[0]); preview.style.display = 'block'; } });
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!file.files[0]) { result.innerHTML = '<p class="err">Choose an image first.</p>'; return; }
  result.textContent = 'reading...';
  const body = new FormData(); body.append('image', file.files[0]);
  try {
    const response = await fetch('/predict', {method: 'POST', body});
    const data = await response.json();
    if (!response.ok) { result.innerHTML = '<p class="err"></p>'; result.firstChild.textContent = data.error; return; }
    const rows = data.digits.map(d => `<tr><td>${d.digit === null ? '?' : d.digit}</td><td>${d.confidence.toFixed(3)}</td><td>${d.box.join(', ')}</td></tr>`).join('');
    result.innerHTML = `<div id="number">${data.number === null ? 'no digit' : data.number}</div>` +
      `<table><tr><th>digit</th><th>confidence</th><th>box x, y, w, h</th></tr>${rows}</table>`;
  } catch (error) { result.innerHTML = '<p class="err"></p>'; result.firstChild.textContent = String(error); }
});
</script></body></html>
"""


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``max_connections`` at a time."""

    daemon_threads = True
    allow_reuse_address = True
    BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 33\r\n"
            b"Connection: close\r\n\r\n{\"error\": \"too many connections\"}")  # fmt: skip

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
    """Owns the HTTP server thread; handlers read the pipeline, never block it."""

    def __init__(self, settings, pipeline):
        self.settings = settings
        self.pipeline = pipeline
        self.streams = threading.BoundedSemaphore(settings.max_streams)
        self.uploads = threading.BoundedSemaphore(MAX_CONCURRENT_UPLOADS)
        self.stopping = threading.Event()
        self._server = None
        self._thread = None

    @property
    def port(self):
        return self._server.server_address[1]

    def start(self):
        server = _Server(
            (self.settings.bind, self.settings.port), _handler_class(self), self.settings.max_connections
        )
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

    def health(self):
        return self.pipeline.health(self.pipeline.config.service.health_timeout_s)

    def snapshot(self):
        view = self.pipeline.last_view
        return None if view is None else encode_jpeg(annotate(view))

    def predict(self, data):
        """Read an upload. At most MAX_CONCURRENT_UPLOADS at once (UploadsBusy beyond), and the
        backend is held only while it runs, so the camera keeps its frame rate."""
        if not self.uploads.acquire(False):
            raise UploadsBusy("%d uploads are being read; try again shortly" % MAX_CONCURRENT_UPLOADS)
        try:
            image = decode_image(data, max_pixels=self.settings.max_pixels)
            reader = reader_for(self.pipeline)
            reader.lock = self.pipeline.infer_lock
            return reader.read_image(image)
        finally:
            self.uploads.release()


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


def _handler_class(web):
    class Handler(BaseHTTPRequestHandler):
        server_version = "digitd"
        protocol_version = "HTTP/1.1"
        timeout = web.settings.idle_timeout_s  # socket timeout: idle keep-alive connections are closed

        def log_message(self, fmt, *args):
            log.debug("http %s: " + fmt, self.client_address[0], *args)

        def _send(self, status, body, content_type="application/json", extra=None):
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode("utf-8")
            elif isinstance(body, str):
                body = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, message, headers=None):
            self._send(status, {"error": message}, extra=headers)

        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    healthy, detail = web.health()
                    self._send(200 if healthy else 503, detail)
                elif path == "/metrics":
                    try:
                        text = metrics_text(web.pipeline)
                    except ImportError:
                        self._error(501, "prometheus_client is not installed")
                        return
                    self._send(200, text, "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/snapshot.jpg":
                    data = web.snapshot()
                    if data is None:
                        self._error(503, "no frame yet")
                    else:
                        self._send(200, data, "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                elif path in ("/", "/index.html"):
                    self._send(
                        200,
                        UPLOAD_PAGE % {"device": web.pipeline.config.device_id},
                        "text/html; charset=utf-8",
                    )
                else:
                    self._error(404, "not found: %s" % path)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # noqa: BLE001 - a request must never take the daemon down
                log.exception("GET %s failed", path)
                self._error(500, "internal error: %s" % exc)

        do_HEAD = do_GET  # noqa: N815

        def _stream(self):
            if not web.streams.acquire(blocking=False):
                self._error(503, "too many stream clients (max %d)" % web.settings.max_streams)
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=%s" % BOUNDARY)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                period = 1.0 / web.settings.stream_fps
                last_index = None
                while not web.stopping.is_set():
                    view = web.pipeline.last_view
                    if view is not None and view[0].index != last_index:
                        last_index = view[0].index
                        data = encode_jpeg(annotate(view))
                        self.wfile.write(("--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                          % (BOUNDARY, len(data))).encode("ascii") + data + b"\r\n")  # fmt: skip
                        self.wfile.flush()
                    time.sleep(period)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
            finally:
                web.streams.release()

        def do_POST(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path != "/predict":
                self._error(404, "not found: %s" % path)
                return
            try:
                length = int(self.headers.get("Content-Length") or -1)
            except ValueError:
                length = -1
            if length < 0:
                self._error(411, "Content-Length required")
                return
            if length > web.settings.max_body_bytes:
                self.close_connection = True  # do not read a body we refuse
                self._error(
                    413, "body of %d bytes exceeds the limit of %d" % (length, web.settings.max_body_bytes)
                )
                return
            try:
                body = self.rfile.read(length)
                content_type = self.headers.get("Content-Type", "")
                data = _parse_multipart(content_type, body) if content_type.startswith("multipart/") else body
                result = web.predict(data)
            except UploadsBusy as exc:
                self._error(503, str(exc), {"Retry-After": "1"})
                return
            except ImageError as exc:
                self._error(400, str(exc))
                return
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                self.close_connection = True
                return
            except Exception as exc:  # noqa: BLE001
                log.exception("POST /predict failed")
                self._error(500, "internal error: %s" % exc)
                return
            self._send(200, result)

    return Handler


def reader_for(pipeline):
    """An ImageReader on the pipeline's backend with its *current* settings (SIGHUP included)."""
    from daemon.predict import ImageReader

    reader = ImageReader(pipeline.config.backend, pipeline.preprocess_params, pipeline.min_confidence)
    reader.backend = pipeline.backend
    return reader
