"""The HTTP server in this process, on a real pipeline (fake camera, ONNX Runtime), over real HTTP."""

import http.client
import json
import urllib.error
import urllib.request

import cv2
import pytest

from daemon import config
from daemon.pipeline import Pipeline
from daemon.web import WebServer
from tests.helpers import MODELS, ListSource, RecordingPublisher
from tests.synthetic import centre_digit_frames, photo


@pytest.fixture(scope="module")
def served(mnist_test):
    images, labels = centre_digit_frames(mnist_test, 5)
    settings = config.from_dict(
        {
            "device_id": "desk<1>",
            "source": {"type": "images", "path": "."},
            "backend": {"type": "onnxruntime", "onnx_model": str(MODELS / "digits.onnx")},
            "http": {"enabled": True, "port": 0, "max_body_bytes": 2 * 1024 * 1024},
        }
    )
    pipeline = Pipeline(settings, ListSource(images), RecordingPublisher())
    pipeline.open()
    pipeline.run()
    web = WebServer(settings.http, pipeline).start()
    yield web, labels
    web.stop()
    pipeline.close()


def request(web, path, data=None, headers=None):
    url = "http://127.0.0.1:%d%s" % (web.port, path)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}), timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_health_metrics_and_snapshot_come_from_the_pipeline(served):
    web, labels = served
    status, _, body = request(web, "/healthz")
    detail = json.loads(body)
    assert detail["frames_out"] == 5 and detail["backend"].startswith("onnxruntime")
    # the source has ended: nothing new is published, but the answer is still an answer
    assert status in (200, 503) and detail["status"] in ("ok", "unhealthy")
    status, headers, body = request(web, "/metrics")
    text = body.decode()
    assert status == 200 and "digitd_frames_out_total 5.0" in text and "digitd_batch_size_count" in text
    status, headers, body = request(web, "/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(__import__("numpy").frombuffer(body, "uint8"), cv2.IMREAD_COLOR).shape == (
        480,
        640,
        3,
    )


def test_the_upload_page_names_the_device_safely(served):
    web, _ = served
    status, headers, body = request(web, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"digitd on desk&lt;1&gt;" in body and b"<form" in body


def test_an_upload_is_read_in_the_mode_asked_and_bad_requests_are_explained(served, mnist_test):
    web, _ = served
    images, labels = mnist_test
    png = cv2.imencode(".png", photo(images[3]))[1].tobytes()
    status, _, body = request(web, "/predict", png, {"Content-Type": "image/png"})
    assert status == 200 and json.loads(body)["number"] == str(labels[3])
    status, _, body = request(web, "/predict?roi=grid", png, {"Content-Type": "image/png"})
    assert status == 200 and len(json.loads(body)["grid"]) == 9
    status, _, body = request(web, "/predict?roi=sideways", png, {"Content-Type": "image/png"})
    assert status == 400 and "roi must be one of" in json.loads(body)["error"]
    status, _, body = request(web, "/predict", b"not an image", {"Content-Type": "image/png"})
    assert status == 400 and "not a decodable image" in json.loads(body)["error"]
    # a body over http.max_body_bytes is refused from its Content-Length, before it is sent
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Length", str(3 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
    connection.close()
    status, _, body = request(web, "/nowhere")
    assert status == 404 and json.loads(body) == {"error": "not found: /nowhere"}


def test_a_meter_digit_photo_is_read_whole_with_roi_full(served):
    from tests.synthetic import tall_digit

    web, _ = served
    png = cv2.imencode(".png", tall_digit(5))[1].tobytes()
    status, _, body = request(web, "/predict?roi=full", png, {"Content-Type": "image/png"})
    result = json.loads(body)
    assert status == 200 and result["number"] == "5" and len(result["digits"]) == 1
