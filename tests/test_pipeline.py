"""The loop itself (daemon/pipeline.py) in the real daemon process: what a user sees on MQTT
when a frame, a ROI or a config reload is not what the loop expects."""

import signal
import time

import pytest
import yaml

from tests.helpers import SAMPLES, run_daemon, write_config

pytestmark = pytest.mark.mqtt
VIDEO = SAMPLES / "demo.mp4"  # 640x480, one digit in the centre square (220, 140, 200, 200)
INSIDE = {"id": "mid", "x": 220, "y": 140, "w": 200, "h": 200}
OUTSIDE = {"id": "far", "x": 5000, "y": 5000, "w": 100, "h": 100}


def boxes_config(tmp_path, broker, boxes, **source):
    settings = {"type": "file", "path": str(VIDEO)}
    settings.update(source)
    return write_config(
        tmp_path / "config.yaml",
        source=settings,
        roi={"mode": "boxes", "boxes": boxes},
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
        stats_interval_s=60,
    )


def test_a_box_outside_the_frame_reads_as_no_digit_and_the_rest_is_published(
    tmp_path, broker, subscriber_factory, schemas
):
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(boxes_config(tmp_path, broker, [INSIDE, OUTSIDE]), "--max-frames", "30")
    assert process.wait(120) == 0, process.log_path.read_text()
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= 30, timeout=10), (
        process.log_path.read_text()
    )
    predictions = subscriber.payloads("prediction")
    for payload in predictions:
        schemas["prediction"].validate(payload)
        far = [r for r in payload["rois"] if r["id"] == "far"][0]
        assert far["digit"] is None
    assert any(p["number"] and p["number"].endswith("?") and p["number"][0].isdigit() for p in predictions)
    log = process.log_path.read_text()
    assert "Traceback" not in log
    assert log.count("lies outside") == 1, "warn once, not every frame"


@pytest.mark.slow
def test_a_reload_that_moves_a_box_out_of_the_frame_keeps_predictions_coming(
    tmp_path, broker, subscriber_factory
):
    config = boxes_config(tmp_path, broker, [INSIDE], loop=True, realtime=True)
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(config)
    try:
        assert subscriber.wait_for(lambda s: len(s.on("prediction")) > 5, timeout=60), (
            process.log_path.read_text()
        )
        data = yaml.safe_load(config.read_text())
        data["roi"]["boxes"] = [INSIDE, OUTSIDE]
        config.write_text(yaml.safe_dump(data))
        process.send_signal(signal.SIGHUP)
        assert subscriber.wait_for(
            lambda s: any(len(p["rois"]) == 2 for p in s.payloads("prediction")), timeout=30
        ), process.log_path.read_text()
        reloaded = len(subscriber.on("prediction"))
        time.sleep(2)
        assert len(subscriber.on("prediction")) > reloaded + 10, process.log_path.read_text()
        assert "Traceback" not in process.log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
