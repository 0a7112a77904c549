"""The setup API over real HTTP, in this process: a real pipeline (a still camera, ONNX Runtime)
reading a config file that PUT /api/config edits."""

import json
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import yaml

from daemon import config
from daemon.pipeline import Pipeline
from daemon.sources import FrameSource
from daemon.web import WebServer
from tests.helpers import MODELS, RecordingPublisher, boxes_around
from tests.synthetic import two_digit_frame

TOKEN = "test-token-0123456789abcdef"
MQTT_SECRET = "mqtt-secret-never-shown"
# the tail of a config served on a free port with the test token, MQTT off
SERVED_WITHOUT_MQTT = """\
http:
  enabled: true
  port: 0
  token: {token}
mqtt:
  enabled: false
"""


CONFIG_TEXT = (
    """\
# my camera on the desk
device_id: desk-01   # the desk
source:
  type: images
  path: .
backend:
  type: onnxruntime
  onnx_model: {model}
roi:
  mode: boxes
  boxes:
    - {{id: left, x: 100, y: 140, w: 200, h: 200}}   # the first digit
preprocess:
  threshold: otsu   # try fixed when the light is even
"""
    + SERVED_WITHOUT_MQTT
    + "  password: ${{DIGITD_TEST_MQTT_PASSWORD}}\n"
)


class StillCamera(FrameSource):
    """A fake camera that shows the same picture at about 20 frames a second until stopped."""

    def __init__(self, image):
        FrameSource.__init__(self, config.defaults().source)
        self.image = image

    def describe(self):
        return "still camera"

    def _open(self):
        pass

    def _read_image(self):
        time.sleep(0.05)
        return self.image

    def _release(self):
        pass


@pytest.fixture
def serve(tmp_path, mnist_test, monkeypatch):
    """serve(token=...) -> (web, pipeline, publisher, config path, labels) on a running pipeline."""
    monkeypatch.setenv("DIGITD_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("DIGITD_TEST_MQTT_PASSWORD", MQTT_SECRET)
    started = []

    def start(token="${DIGITD_TEST_TOKEN}", text=CONFIG_TEXT, frame=None, run=True):
        """``text``: the config file (``{model}``, ``{token}`` filled in); ``frame``: what the
        camera shows (default two MNIST digits); ``run`` False: no frame is ever read."""
        path = tmp_path / "config.yaml"
        path.write_text(text.format(model=MODELS / "digits.onnx", token=json.dumps(token)))
        settings = config.load(str(path))
        digits, labels, _ = two_digit_frame(mnist_test, 0, 1)
        publisher = RecordingPublisher()
        picture = digits if frame is None else frame
        cameras = {item.id: StillCamera(picture) for item in settings.sources} or StillCamera(picture)
        pipeline = Pipeline(settings, cameras, publisher).open()
        runner = threading.Thread(target=pipeline.run) if run else None
        if runner is not None:
            runner.start()
        web = WebServer(settings.http, pipeline, str(path)).start()
        started.append((web, pipeline, runner))
        deadline = time.monotonic() + 20
        while run and pipeline.latest_view() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return web, pipeline, publisher, path, labels

    yield start
    for web, pipeline, runner in started:
        web.stop()
        pipeline.stop()
        if runner is not None:
            runner.join(10)
        pipeline.close()


def call(web, method, path, body=None, headers=None, token=None):
    """(status, headers, parsed JSON body) of one request."""
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (web.port, path), data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def boxes_payload(*boxes):
    return [dict(zip(("id", "x", "y", "w", "h"), box)) for box in boxes]


def test_get_config_shows_the_file_with_secrets_masked(serve):
    web, _, _, _, _ = serve()
    status, _, body = call(web, "GET", "/api/config")
    assert status == 200
    assert body["config"]["mqtt"]["password"] == "***" and body["config"]["http"]["token"] == "***"
    # every key of a box, defaults included (a box's own polarity and digit style: auto)
    assert body["config"]["roi"]["boxes"] == [
        dict(boxes_payload(("left", 100, 140, 200, 200))[0], polarity="auto", style="auto")
    ]
    assert body["token_required"] is True and body["restart_pending"] == []
    assert body["fields"]["preprocess.threshold"]["choices"] == ["otsu", "fixed", "adaptive"]
    assert body["fields"]["roi.boxes[].style"]["choices"] == [
        "auto",
        "drum",
        "segments",
        "handwritten",
        "printed",
    ]
    text = json.dumps(body)
    assert TOKEN not in text and MQTT_SECRET not in text


def test_put_saves_keeping_comments_applies_at_once_and_the_next_prediction_has_the_new_roi(serve):
    web, pipeline, publisher, path, labels = serve()
    before = path.read_text()
    boxes = boxes_payload(("left", 100, 140, 200, 200), ("right", 340, 140, 200, 200))
    change = {"roi": {"boxes": boxes}, "preprocess": {"threshold": "fixed", "fixed_threshold": 90}}
    status, _, result = call(web, "PUT", "/api/config", change, token=TOKEN)
    assert status == 200, result
    assert sorted(result["applied_live"]) == [
        "preprocess.fixed_threshold",
        "preprocess.threshold",
        "roi.boxes",
    ]
    assert result["needs_restart"] == [] and result["backup"] == str(path) + ".bak"
    text = path.read_text()
    for kept in ("# my camera on the desk", "device_id: desk-01   # the desk", "${DIGITD_TEST_TOKEN}"):
        assert kept in text
    assert "threshold: fixed  # try fixed when the light is even" in text  # the comment keeps its column
    assert "- {id: left, x: 100, y: 140, w: 200, h: 200}   # the first digit" in text
    assert "- {id: right, x: 340, y: 140, w: 200, h: 200}" in text
    assert (path.parent / "config.yaml.bak").read_text() == before
    on_disk = config.load(str(path))  # what check-config reads
    assert on_disk.preprocess.fixed_threshold == 90 and [b.id for b in on_disk.roi.boxes] == ["left", "right"]
    assert pipeline.config.preprocess.fixed_threshold == 90
    seen = len(publisher.payloads("prediction"))
    deadline = time.monotonic() + 10
    while len(publisher.payloads("prediction")) <= seen and time.monotonic() < deadline:
        time.sleep(0.05)
    latest = publisher.payloads("prediction")[-1]
    assert [(r["id"], r["box"]) for r in latest["rois"]] == [
        ("left", [100, 140, 200, 200]),
        ("right", [340, 140, 200, 200]),
    ]
    assert [r["digit"] for r in latest["rois"]] == labels


def test_a_key_that_cannot_change_live_is_saved_and_flagged_as_needing_a_restart(serve):
    web, pipeline, _, path, _ = serve()
    status, _, result = call(web, "PUT", "/api/config", {"stats_interval_s": 30}, token=TOKEN)
    assert status == 200 and result["needs_restart"] == ["stats_interval_s"] and result["applied_live"] == []
    assert "stats_interval_s: 30" in path.read_text() and pipeline.config.stats_interval_s == 10.0
    assert call(web, "GET", "/api/config")[2]["restart_pending"] == ["stats_interval_s"]


def test_a_bad_put_is_400_with_every_error_by_key_and_the_file_untouched(serve):
    web, pipeline, _, path, _ = serve()
    before = path.read_bytes()
    change = {
        "preprocess": {"fixed_threshold": 300, "threshold": "magic"},
        "roi": {"boxes": [{"id": "a", "x": 0, "y": 0, "w": 0, "h": 5}], "colour": "red"},
    }
    status, _, result = call(web, "PUT", "/api/config", change, token=TOKEN)
    assert status == 400
    assert sorted(result["errors"]) == [
        "preprocess.fixed_threshold: 300 is above the maximum 255",
        "preprocess.threshold: 'magic' is not one of otsu, fixed, adaptive",
        "roi.boxes[0].w: 0 is below the minimum 1",
        "roi.colour: unknown key",
    ]
    assert path.read_bytes() == before and not (path.parent / "config.yaml.bak").exists()
    assert pipeline.config.preprocess.threshold == "otsu"


def test_changes_need_the_bearer_token_and_the_pages_own_origin(serve):
    web, _, _, path, _ = serve()
    before = path.read_bytes()
    change = {"preprocess": {"blur_kernel": 3}}
    status, headers, result = call(web, "PUT", "/api/config", change)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert call(web, "PUT", "/api/config", change, token="wrong-token-0123456789")[0] == 401
    assert call(web, "PUT", "/api/config", change, {"Cookie": "token=" + TOKEN})[0] == 401
    status, _, result = call(
        web, "PUT", "/api/config", change, {"Origin": "http://evil.example"}, token=TOKEN
    )
    assert status == 403 and "Origin" in result["error"]
    assert path.read_bytes() == before
    own = {"Origin": "http://127.0.0.1:%d" % web.port}
    assert call(web, "PUT", "/api/config", change, own, token=TOKEN)[0] == 200
    assert "blur_kernel: 3" in path.read_text()


def test_without_a_token_only_loopback_hosts_may_change_the_config(serve):
    web, _, _, path, _ = serve(token="")
    change = {"preprocess": {"blur_kernel": 3}}
    status, _, result = call(web, "PUT", "/api/config", change, {"Host": "rebound.example:%d" % web.port})
    assert status == 403 and "loopback" in result["error"]
    assert call(web, "PUT", "/api/config", change)[0] == 200


def test_preview_reads_the_current_frame_with_the_given_settings_and_saves_nothing(serve):
    web, pipeline, _, path, labels = serve()
    before = path.read_bytes()
    boxes = boxes_payload(("left", 100, 140, 200, 200), ("right", 340, 140, 200, 200))
    status, _, result = call(web, "POST", "/api/preview?frame=1", {"roi": {"boxes": boxes}})
    assert status == 200, result
    assert result["frame"]["jpeg"].startswith("data:image/jpeg;base64,")
    assert result["frame"]["width"] == 640 and [r["digit"] for r in result["rois"]] == labels
    assert len(result["rois"][0]["tensor"]) == 28 and result["rois"][0]["crop"].startswith("data:image/jpeg")
    tensors = {}
    for level in (40, 200):
        query = "?preprocess.threshold=fixed&preprocess.fixed_threshold=%d" % level
        status, _, result = call(web, "GET", "/api/preview" + query)
        assert status == 200
        tensors[level] = result["rois"][0]["tensor"]
    assert tensors[40] != tensors[200], "the threshold level changes what the network sees"
    status, _, result = call(web, "GET", "/api/preview?preprocess.blur_kernel=99&mqtt.port=1")
    assert status == 400 and "only roi, preprocess and postprocess" in result["error"]
    status, _, result = call(web, "GET", "/api/preview?preprocess.blur_kernel=99")
    assert status == 400 and result["errors"] == ["preprocess.blur_kernel: 99 is above the maximum 31"]
    assert path.read_bytes() == before and pipeline.config.preprocess.threshold == "otsu"


def test_the_setup_page_and_the_raw_frame_are_served(serve):
    web, _, _, _, _ = serve()
    url = "http://127.0.0.1:%d" % web.port
    with urllib.request.urlopen(url + "/setup", timeout=10) as response:
        page = response.read().decode()
    assert "digitd setup on desk-01" in page and 'id="stage"' in page
    with urllib.request.urlopen(url + "/snapshot.jpg?raw=1", timeout=10) as response:
        assert response.headers["Content-Type"] == "image/jpeg" and int(response.headers["X-Frame-Index"]) > 0


# -- POST /api/reference: the newest frame becomes the alignment reference ---------------------
@pytest.fixture(scope="module")
def meter():
    """(a meter frame at 27051 and one at 27068 with the same drum boxes, the config text
    with those boxes): white FreeFont drums on black, held out from training."""
    meter_digits = pytest.importorskip("engine_build.meter_digits")
    fonts = meter_digits.drum_fonts(held_out=True)
    if not fonts:
        pytest.fail("fonts-freefont-ttf is needed (make test installs it)")
    glyphs = [meter_digits.fonts.render_glyph(fonts[0], digit) for digit in range(10)]
    first, boxes = meter_digits.counter_frame(27051.0, glyphs, count=5)
    later, _ = meter_digits.counter_frame(27068.0, glyphs, count=5)
    lines = "".join(
        "    - {{id: %(id)s, x: %(x)d, y: %(y)d, w: %(w)d, h: %(h)d, polarity: %(polarity)s}}\n" % box
        for box in boxes_around(boxes)
    )
    text = CONFIG_TEXT.replace(
        "    - {{id: left, x: 100, y: 140, w: 200, h: 200}}   # the first digit\n", lines
    )
    return first, later, text


def gray(image):
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def shifted(image, dx, dy):
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def next_prediction(publisher, after=None, timeout=10, topic="prediction"):
    """The first prediction published after this call (``after``: a condition it must meet)."""
    seen = len(publisher.payloads(topic))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for payload in publisher.payloads(topic)[seen:]:
            if after is None or after(payload):
                return payload
        time.sleep(0.05)
    raise AssertionError("no such prediction within %s s" % timeout)


def test_the_newest_frame_becomes_the_reference_and_a_camera_moved_by_20_px_still_reads_right(serve, meter):
    first, later, text = meter
    web, pipeline, publisher, path, _ = serve(text=text, frame=first)
    assert "alignment" not in next_prediction(publisher)  # no reference yet
    before = path.read_bytes()
    reference = path.parent / "reference-default.png"

    # the setup API's rules: the token, and the page's own origin
    assert call(web, "POST", "/api/reference", {})[0] == 401
    evil = {"Origin": "http://evil.example"}
    assert call(web, "POST", "/api/reference", {}, evil, token=TOKEN)[0] == 403
    assert path.read_bytes() == before and not reference.exists()

    status, _, answer = call(web, "POST", "/api/reference", {}, token=TOKEN)
    assert status == 200, answer
    assert answer["reference"] == str(reference) and answer["changed"] == ["roi.align.reference"]
    assert answer["applied_live"] == ["roi.align.reference"] and answer["backup"] == str(path) + ".bak"
    saved = cv2.imread(str(reference), cv2.IMREAD_UNCHANGED)
    assert saved is not None and np.array_equal(saved, first), "the PNG holds the frame, pixel for pixel"
    on_disk = path.read_text()
    assert yaml.safe_load(on_disk)["roi"]["align"]["reference"] == str(reference)
    assert "# my camera on the desk" in on_disk and "threshold: otsu   # try fixed" in on_disk
    assert config.load(str(path)).roi.align.reference == str(reference)  # as check-config reads it
    assert call(web, "GET", "/api/config")[2]["config"]["roi"]["align"]["reference"] == str(reference)

    # the camera is knocked 20 px to the right and 12 up while the meter moves on
    pipeline.source.image = shifted(later, 20, -12)
    moved = next_prediction(publisher, lambda p: p.get("alignment") and abs(p["alignment"]["dx"] - 20) < 1)
    assert moved["number"] == "27068" and moved["alignment"]["ok"]
    assert abs(moved["alignment"]["dy"] + 12) < 1, moved["alignment"]
    # the page draws boxes on /snapshot.jpg?raw=1: it shows the frame in the reference's pixels,
    # where the boxes are, not the camera's moved picture
    with urllib.request.urlopen("http://127.0.0.1:%d/snapshot.jpg?raw=1" % web.port, timeout=20) as response:
        shown = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_GRAYSCALE).astype(float)
    inner = (slice(30, -30), slice(30, -30))
    off_drawn = np.abs(shown - gray(later))[inner].mean()
    off_moved = np.abs(shown - gray(shifted(later, 20, -12)))[inner].mean()
    assert off_drawn < 0.5 * off_moved, (off_drawn, off_moved)

    # turned off from the page: the boxes are cut where they are drawn again, the file stays
    status, _, answer = call(web, "PUT", "/api/config", {"roi": {"align": {"reference": ""}}}, token=TOKEN)
    assert status == 200 and answer["applied_live"] == ["roi.align.reference"], answer
    unaligned = next_prediction(publisher, lambda p: "alignment" not in p)  # frames queued before: aligned
    assert unaligned["number"] != "27068"
    assert yaml.safe_load(path.read_text())["roi"]["align"]["reference"] == "" and reference.exists()


def test_saving_the_reference_again_replaces_the_image_and_applies_it(serve, meter):
    first, later, text = meter
    web, pipeline, publisher, path, _ = serve(text=text, frame=first)
    next_prediction(publisher)  # a frame to take (before it the answer is 409)
    assert call(web, "POST", "/api/reference", {}, token=TOKEN)[0] == 200
    pipeline.source.image = shifted(later, 20, 0)  # the camera moved; the user takes a new reference
    # (a frame prepared before the reference was applied has no alignment yet)
    next_prediction(publisher, lambda p: p.get("alignment") and abs(p["alignment"]["dx"] - 20) < 1)
    next_prediction(publisher)  # published after that one: the newest frame is the moved picture
    status, _, answer = call(web, "POST", "/api/reference", {}, token=TOKEN)
    assert status == 200 and answer["changed"] == [], answer  # the same file name: only the image changed
    saved = cv2.imread(answer["reference"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(saved, shifted(later, 20, 0))
    # registered to the new reference (no shift), not the old one (20 px), from the next frames on
    # (the boxes stay where they were drawn: on the new reference they are to be drawn again)
    aligned = next_prediction(publisher, lambda p: p.get("alignment") and abs(p["alignment"]["dx"]) < 1)
    assert aligned["alignment"]["ok"] and abs(aligned["alignment"]["dy"]) < 1


def test_a_reference_before_the_first_frame_is_409_and_nothing_is_written(serve, meter):
    first, _, text = meter
    web, _, _, path, _ = serve(text=text, frame=first, run=False)
    before = path.read_bytes()
    status, headers, answer = call(web, "POST", "/api/reference", {}, token=TOKEN)
    assert status == 409 and "no frame" in answer["error"] and headers["Retry-After"] == "1"
    assert path.read_bytes() == before and not (path.parent / "reference-default.png").exists()


def test_a_reference_that_cannot_be_written_is_500_with_the_reason_and_nothing_changes(serve, meter):
    first, _, text = meter
    web, pipeline, _, path, _ = serve(text=text, frame=first)
    before = path.read_bytes()
    (path.parent / "reference-default.png").mkdir()  # the place is taken (as root, permissions are not)
    status, _, answer = call(web, "POST", "/api/reference", {}, token=TOKEN)
    assert status == 500, answer
    assert "cannot write the reference frame" in answer["error"] and "Is a directory" in answer["error"]
    assert path.read_bytes() == before and pipeline.config.roi.align.reference == ""
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".digitd-")] == []


TWO_CAMERAS = (
    """\
# two meters
device_id: cellar-01
backend:
  type: onnxruntime
  onnx_model: {model}
sources:
  - id: water   # the cold water meter
    type: images
    path: .
    roi:
      mode: boxes
      boxes:
BOXES
  - id: gas
    type: images
    path: .
    roi:
      mode: boxes
      boxes:
BOXES
"""
    + SERVED_WITHOUT_MQTT
)


def test_with_several_cameras_the_reference_is_saved_for_the_camera_asked_for(serve, meter):
    first, later, text = meter
    boxes = "\n".join(
        "      " + line.strip() for line in text.splitlines() if line.strip().startswith("- {{id: d")
    )
    web, pipeline, publisher, path, _ = serve(text=TWO_CAMERAS.replace("BOXES", boxes), frame=first)
    next_prediction(publisher, topic="gas/prediction")  # a frame to take (before it the answer is 409)
    status, _, answer = call(web, "POST", "/api/reference?source=gas", {}, token=TOKEN)
    assert status == 200, answer
    reference = path.parent / "reference-gas.png"
    assert answer["reference"] == str(reference) and np.array_equal(cv2.imread(str(reference)), first)
    # one camera's roi changes live: nothing needs a restart
    assert answer["applied_live"] == ["sources[1].roi.align.reference"] and answer["needs_restart"] == []
    on_disk = path.read_text()
    water, gas = yaml.safe_load(on_disk)["sources"]
    assert gas["roi"]["align"]["reference"] == str(reference) and "align" not in water["roi"]
    assert "- id: water   # the cold water meter" in on_disk
    for camera in pipeline.cameras:
        camera.source.image = shifted(later, 20, -12)
    moved = next_prediction(
        publisher, lambda p: p.get("alignment") and abs(p["alignment"]["dx"] - 20) < 1, topic="gas/prediction"
    )
    assert moved["number"] == "27068"
    assert call(web, "POST", "/api/reference?source=oil", {}, token=TOKEN)[0] == 404


TWO_DESKS = (
    """\
device_id: desk-02
backend:
  type: onnxruntime
  onnx_model: {model}
sources:
  - id: left   # the camera on the left
    type: images
    path: .
    roi:
      mode: boxes
      boxes:
        - {{id: a, x: 100, y: 140, w: 200, h: 200}}
  - id: right
    type: images
    path: .
    roi:
      mode: center
"""
    + SERVED_WITHOUT_MQTT
)


def test_with_several_cameras_the_setup_api_shows_previews_and_saves_the_roi_of_the_camera_asked_for(serve):
    web, pipeline, publisher, path, labels = serve(text=TWO_DESKS)
    status, _, body = call(web, "GET", "/api/config")
    assert status == 200 and body["sources"] == ["left", "right"] and body["source"] == "left"
    assert body["config"]["roi"]["mode"] == "boxes" and body["config"]["roi"]["boxes"][0]["id"] == "a"
    body = call(web, "GET", "/api/config?source=right")[2]
    assert body["source"] == "right" and body["config"]["roi"]["mode"] == "center"
    status, _, answer = call(web, "GET", "/api/config?source=oil")
    assert status == 404 and "left, right" in answer["error"]
    # a preview reads that camera's frame with that camera's ROIs, or the ones given
    assert [r["id"] for r in call(web, "GET", "/api/preview?source=right")[2]["rois"]] == ["center"]
    right_box = {"mode": "boxes", "boxes": boxes_payload(("b", 340, 140, 200, 200))}
    status, _, result = call(web, "POST", "/api/preview?source=right", {"roi": right_box})
    assert status == 200 and [(r["id"], r["digit"]) for r in result["rois"]] == [("b", labels[1])]
    before = path.read_text()
    change = {"roi": right_box, "preprocess": {"blur_kernel": 3}}
    status, _, answer = call(web, "PUT", "/api/config?source=right", change, token=TOKEN)
    assert status == 200, answer
    assert answer["needs_restart"] == [] and any(
        k.startswith("sources[1].roi") for k in answer["applied_live"]
    )
    on_disk = yaml.safe_load(path.read_text())
    left, right = on_disk["sources"]
    assert right["roi"]["mode"] == "boxes" and right["roi"]["boxes"][0]["id"] == "b"
    assert sorted(right["roi"]) == ["boxes", "mode"]  # what changed, not every default
    assert left == yaml.safe_load(before)["sources"][0]  # the other camera is as it was
    assert on_disk["preprocess"]["blur_kernel"] == 3 and "roi" not in on_disk  # shared sections stay shared
    assert "- id: left   # the camera on the left" in path.read_text()
    latest = next_prediction(publisher, lambda p: p["rois"][0]["id"] == "b", topic="right/prediction")
    assert latest["rois"][0]["digit"] == labels[1]
    assert call(web, "GET", "/api/config?source=right")[2]["config"]["roi"]["boxes"][0]["id"] == "b"
    # one camera, no sources: naming one is an error, not a silent save elsewhere
    single = serve()[0]
    status, _, answer = call(single, "PUT", "/api/config?source=right", change, token=TOKEN)
    assert status == 404 and "one camera" in answer["error"]
