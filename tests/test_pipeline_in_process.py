"""The pipeline in this process: a fake camera (tests.helpers.ListSource), the real ONNX Runtime
backend, a publisher that records what would go to MQTT."""

import numpy as np

from daemon import config
from daemon.pipeline import Pipeline
from tests.helpers import MODELS, ListSource, RecordingPublisher, run_to_the_end
from tests.synthetic import centre_digit_frames as frames


def settings(**sections):
    data = {"source": {"type": "images", "path": "."}, "backend": {"type": "onnxruntime"}}
    data["backend"]["onnx_model"] = str(MODELS / "digits.onnx")
    data.update(sections)
    return config.from_dict(data)


def test_every_frame_is_published_in_order_with_its_digit_and_batched_across_frames(mnist_test):
    images, labels = frames(mnist_test, 40)
    publisher = RecordingPublisher()
    # a long batch wait and a source faster than inference: frames share inference calls
    pipeline = run_to_the_end(
        Pipeline(settings(batching={"max_wait_ms": 200}), ListSource(images), publisher)
    )
    predictions = publisher.payloads("prediction")
    assert [p["frame"] for p in predictions] == list(range(1, 41))
    read = [p["rois"][0]["digit"] for p in predictions]
    assert sum(a == b for a, b in zip(read, labels)) >= 39, (read, labels)
    snapshot = pipeline.stats_snapshot()
    assert snapshot["frames_in"] == snapshot["frames_out"] == 40
    assert snapshot["mean_batch"] > 1.0, snapshot
    assert publisher.payloads("stats")[-1]["frames_out"] == 40
    # state is retained and sent only when the smoothed reading changes
    states = [(kind, retain) for kind, _, _, retain in publisher.messages if kind == "state"]
    assert states and all(retain for _, retain in states) and len(states) <= 40


def test_a_frame_that_fails_in_the_roi_stage_is_counted_and_the_rest_published(mnist_test):
    images, _ = frames(mnist_test, 10)
    images[4] = np.zeros(480, np.uint8)  # a broken frame: one row, no second dimension
    publisher = RecordingPublisher()
    pipeline = run_to_the_end(Pipeline(settings(), ListSource(images), publisher))
    snapshot = pipeline.stats_snapshot()
    assert snapshot["frame_errors"] == 1 and snapshot["frames_out"] == 9
    assert 5 not in [p["frame"] for p in publisher.payloads("prediction")]


def test_live_settings_change_the_next_frames_and_the_rest_waits_for_a_restart(mnist_test):
    images, labels = frames(mnist_test, 3)
    pipeline = Pipeline(settings(), ListSource(images), RecordingPublisher())
    new = settings(
        roi={"mode": "boxes", "boxes": [{"id": "digit", "x": 220, "y": 140, "w": 200, "h": 200}]},
        batching={"max_batch": 4},
    )
    pipeline.open()
    try:
        live, restart = pipeline.apply_config(new)
        pipeline.run()
    finally:
        pipeline.close()
    assert live == ["roi.mode", "roi.boxes"] and restart == ["batching.max_batch"]
    assert pipeline.config.batching.max_batch == 32  # still the running value
    predictions = pipeline.publisher.payloads("prediction")
    assert [p["rois"][0]["id"] for p in predictions] == ["digit"] * 3
    assert [p["rois"][0]["digit"] for p in predictions] == labels


def test_health_says_why_it_is_unhealthy():
    pipeline = Pipeline(settings(), ListSource([]), RecordingPublisher())
    healthy, detail = pipeline.health()
    assert not healthy and detail["reason"] == "backend not loaded" and not detail["alive"]
    pipeline.open()
    try:
        healthy, detail = pipeline.health()
        assert healthy and detail["backend"].startswith("onnxruntime") and detail["alive"]
        pipeline.stop()
        healthy, detail = pipeline.health()
        assert not healthy and detail["reason"] == "stopping"
    finally:
        pipeline.close()


def test_an_upload_is_read_with_the_cameras_backend_and_current_settings(mnist_test):
    images, labels = frames(mnist_test, 1)
    pipeline = Pipeline(settings(), ListSource(images), RecordingPublisher())
    pipeline.open()
    try:
        pipeline.run()
        result = pipeline.read_still(images[0])
        assert result["number"] == str(labels[0]) and result["digits"][0]["digit"] == labels[0]
        view = pipeline.latest_view()
        assert view.frame.index == 1 and view.readings[0].digit == labels[0]
    finally:
        pipeline.close()
