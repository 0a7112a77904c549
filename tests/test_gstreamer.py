"""GStreamer for real: Debian's python3-opencv (built with GStreamer, like JetPack's) in the
.venv-gst virtualenv that make test creates with --system-site-packages, python3-gi, a real
RTSP server (gst-rtsp-server) and Mosquitto. Run with ``-m gstreamer`` in that venv.

What a Jetson has and this host has not (nvarguscamerasrc, nvvidconv) is swapped for
videotestsrc/videoflip+videoconvert when a pipeline is checked, and must fail cleanly when used.
"""

import os
import re
import signal
import subprocess
import sys
import time

import cv2
import pytest

from daemon.sources.capture import csi_pipeline, has_gstreamer
from tests.helpers import ROOT, free_port, run_daemon, write_config

pytestmark = pytest.mark.gstreamer

if not has_gstreamer():
    if os.environ.get("DIGITD_REQUIRE_GSTREAMER"):
        raise RuntimeError(
            "this OpenCV (%s) has no GStreamer; make test runs these in .venv-gst" % cv2.__file__
        )
    pytest.skip(
        "needs an OpenCV built with GStreamer (make test runs these in .venv-gst)", allow_module_level=True
    )


def gst():
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    return Gst


def on_this_host(pipeline):
    """The Jetson-only elements swapped for stock ones; the rest of the string is untouched."""
    pipeline = re.sub(r"nvarguscamerasrc sensor-id=\d+", "videotestsrc num-buffers=3", pipeline)
    pipeline = pipeline.replace("video/x-raw(memory:NVMM)", "video/x-raw")
    return re.sub(r"nvvidconv flip-method=(\d)", r"videoflip method=\1 ! videoconvert", pipeline)


@pytest.mark.parametrize("fps", [30, 0.25])
def test_the_csi_pipeline_parses_and_delivers_grey_frames(fps):
    pipeline = on_this_host(csi_pipeline(0, 320, 240, fps, 2))
    assert not re.search(r"nvarguscamerasrc|nvvidconv|NVMM", pipeline)
    parsed = gst().parse_launch(pipeline)  # raises GLib.Error on a syntax or caps error
    elements = sorted(element.get_factory().get_name() for element in parsed.children)
    assert elements == ["appsink", "capsfilter", "capsfilter", "videoconvert", "videoflip", "videotestsrc"]
    if fps == 30:
        capture = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        ok, image = capture.read()
        capture.release()
        assert ok and image.shape == (240, 320)  # GRAY8 from the hardware converter: one channel


def test_csi_on_a_host_without_the_jetson_elements_exits_69_naming_them(tmp_path):
    config_path = write_config(
        tmp_path / "config.yaml",
        source={"type": "csi"},
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": free_port()},
    )
    started = time.monotonic()
    process = run_daemon(config_path)
    assert process.wait(15) == 69
    assert time.monotonic() - started < 15
    log = process.log_path.read_text()
    assert "GStreamer element nvarguscamerasrc, nvvidconv not found" in log and "JetPack" in log


@pytest.mark.mqtt
def test_a_videotestsrc_pipeline_reaches_mqtt_through_the_daemon(
    tmp_path, broker, subscriber_factory, schemas
):
    pipeline = (
        "videotestsrc pattern=ball ! video/x-raw, width=320, height=240, framerate=30/1 ! videoconvert ! "
        "video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )
    config_path = write_config(
        tmp_path / "config.yaml",
        source={"type": "csi", "pipeline": pipeline},
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(config_path, "--max-frames", "20")
    assert process.wait(60) == 0, process.log_path.read_text()
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= 20, timeout=10)
    predictions = subscriber.payloads("prediction")
    for payload in predictions:
        schemas["prediction"].validate(payload)
    assert [p["frame"] for p in predictions] == sorted(p["frame"] for p in predictions)


class RtspServer(object):
    def __init__(self, port):
        self.port = port
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "rtsp_server.py"), str(self.port)],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        )
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


@pytest.mark.mqtt
def test_rtsp_source_reads_a_real_server_and_reconnects_after_it_restarts(
    tmp_path, broker, subscriber_factory
):
    server = RtspServer(free_port())
    server.start()
    source = {
        "type": "rtsp",
        "uri": "rtsp://127.0.0.1:%d/test" % server.port,
        "stall_timeout_s": 2.0,
        "reopen_initial_delay_s": 0.2,
        "reopen_max_delay_s": 1.0,
    }
    config_path = write_config(
        tmp_path / "config.yaml",
        source=source,
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(config_path)
    try:
        assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= 5, timeout=30), (
            process.log_path.read_text()
        )
        server.stop()
        time.sleep(2.0)
        before = len(subscriber.on("prediction"))
        server.start()
        assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= before + 5, timeout=30), (
            process.log_path.read_text()
        )
        assert "reopened" in process.log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(20)
        server.stop()
    assert code == 0, process.log_path.read_text()
