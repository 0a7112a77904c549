"""The whole daemon: generated video -> daemon process -> real Mosquitto -> subscriber."""

import json
import signal
import time

import pytest

from tests.helpers import SAMPLES, run_daemon, write_config

pytestmark = pytest.mark.mqtt
VIDEO = SAMPLES / "demo.mp4"
TRUTH = json.loads((SAMPLES / "demo.mp4.labels.json").read_text())["truth"]


def daemon_config(tmp_path, broker, **overrides):
    sections = {
        "source": {"type": "file", "path": str(VIDEO)},
        "backend": {"type": "onnxruntime"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        "stats_interval_s": 1,
    }
    sections.update(overrides)
    return write_config(tmp_path / "config.yaml", **sections)


def test_every_frame_arrives_readings_are_right_and_messages_match_the_schema(
    tmp_path, broker, subscriber_factory, schemas
):
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(daemon_config(tmp_path, broker))
    assert process.wait(120) == 0, process.log_path.read_text()
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= len(TRUTH), timeout=10)
    predictions = subscriber.payloads("prediction")
    assert [p["frame"] for p in predictions] == list(range(1, len(TRUTH) + 1))
    for kind in ("prediction", "state", "stats"):
        for payload in subscriber.payloads(kind):
            schemas[kind].validate(payload)
    assert all(p["backend"] == "onnxruntime-int8" and p["device_id"] == "test-01" for p in predictions)
    digits = [(p["rois"][0]["digit"], TRUTH[p["frame"] - 1]) for p in predictions]
    with_digit = [(got, want) for got, want in digits if want is not None]
    accuracy = sum(got == want for got, want in with_digit) / float(len(with_digit))
    assert accuracy >= 0.98, accuracy
    blanks = [got for got, want in digits if want is None]
    assert blanks and all(got is None for got in blanks), "an empty sheet must read as no digit"
    states = subscriber.payloads("state")
    assert len(states) >= len(set(t for t in TRUTH)) - 1  # the reading changed with the video
    assert states[-1]["number"] is None or states[-1]["number"] == str(TRUTH[-1])


def test_availability_is_retained_online_then_offline_after_clean_stop(tmp_path, broker, subscriber_factory):
    config = daemon_config(
        tmp_path, broker, source={"type": "file", "path": str(VIDEO), "loop": True, "realtime": True}
    )
    process = run_daemon(config)
    watcher = subscriber_factory(broker.port)
    assert watcher.wait_for(lambda s: s.on("prediction"), timeout=60), process.log_path.read_text()
    late = subscriber_factory(broker.port)  # joins later: sees the retained message
    assert late.wait_for(lambda s: s.on("availability"), timeout=5)
    assert late.on("availability")[-1][1:] == (b"online", True)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert time.monotonic() - started < 10
    assert watcher.wait_for(lambda s: s.on("availability") and s.on("availability")[-1][1] == b"offline", 5)
    after = subscriber_factory(broker.port)
    assert after.wait_for(lambda s: s.on("availability"), timeout=5)
    assert after.on("availability")[-1][1:] == (b"offline", True)


def test_kill_9_publishes_offline_through_the_last_will(tmp_path, broker, subscriber_factory):
    config = daemon_config(
        tmp_path,
        broker,
        source={"type": "file", "path": str(VIDEO), "loop": True, "realtime": True},
        mqtt={"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5},
    )
    process = run_daemon(config)
    watcher = subscriber_factory(broker.port)
    assert watcher.wait_for(lambda s: s.on("prediction"), timeout=60), process.log_path.read_text()
    process.send_signal(signal.SIGKILL)
    process.wait(5)
    # The broker notices the dead TCP connection at once (RST) or after 1.5 x keepalive.
    assert watcher.wait_for(lambda s: s.on("availability") and s.on("availability")[-1][1] == b"offline", 15)


def test_corrupt_video_exits_69_with_a_clear_message(tmp_path, broker):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 5000)
    process = run_daemon(daemon_config(tmp_path, broker, source={"type": "file", "path": str(bad)}))
    assert process.wait(60) == 69
    log = process.log_path.read_text()
    assert "corrupt.mp4" in log and "Traceback" not in log


def test_bad_config_exits_78_before_touching_anything(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("source: {type: file, path: x.mp4}\nbackend: {type: cuda}\n")
    process = run_daemon(path)
    assert process.wait(30) == 78
    assert "backend.type: 'cuda' is not one of" in process.log_path.read_text()


def test_paho_version_under_test(request):
    """make test runs this module with paho-mqtt 2.x and again with 1.6 (DIGITD_EXPECT_PAHO)."""
    import os

    import paho.mqtt

    expected = os.environ.get("DIGITD_EXPECT_PAHO")
    if expected:
        assert paho.mqtt.__version__.startswith(expected)
    else:
        assert paho.mqtt.__version__.startswith("2.")
