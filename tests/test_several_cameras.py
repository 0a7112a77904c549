"""Several cameras in one daemon (``sources:``): one batcher, one backend, readings back to
their camera, topics per camera, a camera that goes away while the others go on."""

import json
import shutil
import sys
import time
import urllib.error
import urllib.request

import pytest

from daemon import config
from daemon.pipeline import Pipeline
from tests.helpers import (
    MODELS,
    ROOT,
    SAMPLES,
    ListSource,
    RecordingPublisher,
    free_port,
    run_daemon,
    run_to_the_end,
    write_config,
)
from tests.synthetic import centre_digit_frames

VIDEO = SAMPLES / "demo.mp4"  # 640x480, one digit in the centre square, labels beside it
TRUTH = json.loads((SAMPLES / "demo.mp4.labels.json").read_text())["truth"]
SIMULATOR = ROOT / "tests" / "tensorrt_simulator"


def two_cameras(**backend):
    settings = {"type": "onnxruntime", "onnx_model": str(MODELS / "digits.onnx")}
    settings.update(backend)
    return config.from_dict(
        {
            "sources": [
                {"id": "left", "type": "images", "path": "."},
                {
                    "id": "right",
                    "type": "images",
                    "path": ".",
                    "roi": {"mode": "boxes", "boxes": [{"id": "d", "x": 220, "y": 140, "w": 200, "h": 200}]},
                },
            ],
            "backend": settings,
            "batching": {"max_wait_ms": 100},
        }
    )


def test_crops_of_two_cameras_share_batches_and_readings_go_back_to_their_camera(mnist_test, schemas):
    left, left_labels = centre_digit_frames(mnist_test, 30)
    right, right_labels = centre_digit_frames(mnist_test, 30, start=100)
    publisher = RecordingPublisher()
    pipeline = Pipeline(two_cameras(), {"left": ListSource(left), "right": ListSource(right)}, publisher)
    run_to_the_end(pipeline)
    for camera, labels, roi_id in (("left", left_labels, "center"), ("right", right_labels, "d")):
        predictions = publisher.payloads(camera + "/prediction")
        assert [p["frame"] for p in predictions] == list(range(1, 31))
        assert {p["source"] for p in predictions} == {camera}
        assert {p["rois"][0]["id"] for p in predictions} == {roi_id}  # each camera its own ROIs
        read = [p["rois"][0]["digit"] for p in predictions]
        assert sum(a == b for a, b in zip(read, labels)) >= 29, (camera, read, labels)
        assert publisher.payloads(camera + "/state")[0]["source"] == camera
        for payload in predictions[:3] + publisher.payloads(camera + "/state"):
            schemas["prediction" if "latency_ms" in payload else "state"].validate(payload)
    assert publisher.payloads("prediction") == []  # nothing on the single-camera topic
    snapshot = pipeline.stats_snapshot()
    assert snapshot["frames_out"] == 60 and snapshot["mean_batch"] > 1.0
    stats = publisher.payloads("stats")[-1]
    schemas["stats"].validate(json.loads(json.dumps(stats)))
    assert [(s["id"], s["frames_out"]) for s in stats["sources"]] == [("left", 30), ("right", 30)]


def test_one_engine_and_one_cuda_context_serve_every_camera(tmp_path, monkeypatch, mnist_test):
    monkeypatch.setenv("DIGITD_TRT_SIM_VERSION", "10.3.0")
    monkeypatch.syspath_prepend(str(SIMULATOR))
    for name in [n for n in sys.modules if n.split(".")[0] in ("tensorrt", "pycuda")]:
        monkeypatch.delitem(sys.modules, name)
    import pycuda.driver as cuda
    import tensorrt as trt

    from daemon.tensorrt import build

    for name in ("digits.onnx", "digits.onnx.json", "digits.fp16.onnx", "digits.fp16.onnx.json"):
        shutil.copy(str(MODELS / name), str(tmp_path / name))
    engine = tmp_path / "digits.fp16.engine"
    build.build(trt, cuda, tmp_path / "digits.onnx", engine, "fp16", timing_cache=None)
    contexts = []
    make_context = cuda.Device.make_context
    monkeypatch.setattr(
        cuda.Device, "make_context", lambda device, *a: contexts.append(1) or make_context(device, *a)
    )
    engines_before = sum(call[0] == "Runtime.deserialize_cuda_engine" for call in trt.calls)
    settings = two_cameras(type="tensorrt", engine=str(engine), onnx_model=str(tmp_path / "digits.onnx"))
    images, labels = centre_digit_frames(mnist_test, 10)
    publisher = RecordingPublisher()
    pipeline = Pipeline(settings, {"left": ListSource(images), "right": ListSource(images)}, publisher)
    run_to_the_end(pipeline)
    assert len(contexts) == 1
    assert sum(call[0] == "Runtime.deserialize_cuda_engine" for call in trt.calls) - engines_before == 1
    for camera in ("left", "right"):
        predictions = publisher.payloads(camera + "/prediction")
        assert {p["backend"] for p in predictions} == {"tensorrt-fp16"}
        assert sum(p["rois"][0]["digit"] == t for p, t in zip(predictions, labels)) >= 9


def test_sources_and_source_together_is_a_config_error_and_ids_must_be_topic_safe():
    with pytest.raises(config.ConfigError) as raised:
        config.from_dict(
            {"source": {"type": "images", "path": "."}, "sources": [{"id": "a", "path": "x.mp4"}]}
        )
    assert any(e.startswith("sources: give either source and roi") for e in raised.value.errors)
    with pytest.raises(config.ConfigError) as raised:
        config.from_dict({"sources": [{"id": "a/b", "path": "x.mp4"}, {"id": "c", "type": "rtsp"}]})
    assert raised.value.errors == [
        "sources[0].id: 'a/b' must be letters, digits, '-' or '_' (it is part of MQTT topics)",
        "sources[1].uri: type rtsp needs a stream address",
    ]


def healthz(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


@pytest.mark.mqtt
@pytest.mark.slow
def test_two_videos_at_30_fps_then_one_cut_while_the_other_keeps_publishing(
    tmp_path, broker, subscriber_factory
):
    cut = tmp_path / "cut.mp4"
    shutil.copy(str(VIDEO), str(cut))
    http_port = free_port()
    camera = {
        "type": "file",
        "realtime": True,
        "fps": 30,
        "reopen_initial_delay_s": 0.2,
        "reopen_max_delay_s": 0.5,
    }
    config_path = write_config(
        tmp_path / "config.yaml",
        sources=[
            dict(camera, id="kept", path=str(VIDEO), loop=True),
            dict(camera, id="cut", path=str(cut), loop=True),
        ],
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
        http={"enabled": True, "port": http_port},
        service={"health_timeout_s": 1.0},
        stats_interval_s=1,
    )
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(config_path)
    try:
        # a first pass of the video from both cameras: every frame the camera took (a live
        # source drops frames only when the machine cannot keep up, and counts them) published
        # with its camera's id, and read as well as with one camera
        assert subscriber.wait_for(
            lambda s: (
                all(
                    max([0] + [p["frame"] for p in s.payloads(c + "/prediction")]) > len(TRUTH)
                    for c in ("kept", "cut")
                )
                and s.payloads("stats")
            ),
            timeout=90,
        ), process.log_path.read_text()
        seen = len(subscriber.payloads("stats"))  # a stats message from after the first pass
        assert subscriber.wait_for(lambda s: len(s.payloads("stats")) > seen, timeout=10)
        dropped = {c["id"]: c["dropped_frames"] for c in subscriber.payloads("stats")[-1]["sources"]}
        for camera in ("kept", "cut"):
            first_pass = [p for p in subscriber.payloads(camera + "/prediction") if p["frame"] <= len(TRUTH)]
            frames = [p["frame"] for p in first_pass]
            assert frames == sorted(set(frames)) and len(TRUTH) - len(frames) <= dropped[camera], (
                camera,
                dropped,
            )
            assert {p["source"] for p in first_pass} == {camera}
            right = sum(p["rois"][0]["digit"] == TRUTH[p["frame"] - 1] for p in first_pass)
            assert right >= 0.95 * len(first_pass), (camera, right)
        cut.unlink()  # the camera goes away: its next loop cannot reopen the file
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = healthz(http_port)
            states = {s["id"]: s["state"] for s in health.get("sources", [])}
            if states.get("cut") == "reconnecting":
                break
            time.sleep(0.2)
        assert states == {"kept": "running", "cut": "reconnecting"}, health
        assert health["status"] == "unhealthy" or health["alive"], health
        kept_before = len(subscriber.payloads("kept/prediction"))
        cut_before = len(subscriber.payloads("cut/prediction"))
        time.sleep(3)
        assert len(subscriber.payloads("kept/prediction")) > kept_before + 10  # it went on (~30 fps unloaded)
        assert len(subscriber.payloads("cut/prediction")) == cut_before
        stats = subscriber.payloads("stats")[-1]
        assert {s["id"]: s["state"] for s in stats["sources"]} == {"kept": "running", "cut": "reconnecting"}
        assert stats["source_state"] == "reconnecting"
    finally:
        process.terminate()
        process.wait(20)
    assert process.returncode == 0, process.log_path.read_text()


def test_snapshot_and_health_per_camera_over_http(mnist_test):
    from daemon.web import WebServer

    left, _ = centre_digit_frames(mnist_test, 3)
    right, _ = centre_digit_frames(mnist_test, 5, start=50)
    settings = two_cameras()
    settings.http.port = 0
    pipeline = Pipeline(
        settings, {"left": ListSource(left), "right": ListSource(right)}, RecordingPublisher()
    )
    pipeline.open()
    web = None
    try:
        pipeline.run()
        web = WebServer(settings.http, pipeline).start()

        def get(path):
            try:
                with urllib.request.urlopen(
                    "http://127.0.0.1:%d%s" % (web.port, path), timeout=10
                ) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        status, body = get("/snapshot.jpg?source=right")
        assert status == 200 and body[:2] == b"\xff\xd8"
        assert get("/snapshot.jpg?source=nope")[0] == 404
        assert get("/stream.mjpg?source=nope")[0] == 404
        status, body = get("/healthz")
        frames = {s["id"]: s["frames_out"] for s in json.loads(body)["sources"]}
        assert frames == {"left": 3, "right": 5}
        assert pipeline.latest_view("right").frame.index == 5
    finally:
        if web is not None:
            web.stop()
        pipeline.close()
