"""What tests share besides fixtures: project paths, writing a config, running the daemon and
its command line as a subprocess, and the Mosquitto broker and subscriber (tools/broker.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon.publish import NullPublisher
from daemon.sources import FrameSource
from tools.broker import Broker, Subscriber, free_port, mosquitto_binary  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLES = ROOT / "samples"
SCHEMAS = ROOT / "daemon" / "schema"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_config(path, **sections):
    """Write a config YAML from keyword sections (e.g. source={...}, mqtt={...})."""
    data = {"device_id": "test-01", "log_level": "INFO"}
    data.update(sections)
    data.setdefault("http", {"enabled": False})  # tests that want HTTP pick a free port
    backend = data.setdefault("backend", {})
    for key, name in (("onnx_model", "digits.onnx"), ("keras_model", "digits.keras")):
        backend.setdefault(key, str(MODELS / name))
    Path(path).write_text(yaml.safe_dump(data))
    return Path(path)


def run_daemon(config_path, *extra, env=None, **kwargs):
    """Start ``python -m daemon run`` as a subprocess (stderr captured to a file)."""
    log_path = Path(str(config_path) + ".log")
    env = dict(env or os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "-c", str(config_path)] + list(extra),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=open(str(log_path), "wb"),
        env=env,
        **kwargs,
    )
    process.log_path = log_path
    return process


def run_cli(*args, timeout=120, env=None):
    """Run ``python -m daemon ARGS``; returns CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "daemon"] + [str(a) for a in args],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,  # capture_output and text came in Python 3.7
        timeout=timeout,
        env=env,
    )


class ListSource(FrameSource):
    """A fake camera: serves ``images`` once, in order, then ends (like a video file)."""

    def __init__(self, images, settings=None):
        from daemon import config

        FrameSource.__init__(self, settings or config.defaults().source)
        self.images = list(images)
        self._position = 0

    def describe(self):
        return "list of %d images" % len(self.images)

    def _open(self):
        self._position = 0

    def _read_image(self):
        if self._position >= len(self.images):
            return None
        self._position += 1
        return self.images[self._position - 1]

    def _release(self):
        pass


class RecordingPublisher(NullPublisher):
    """Keeps every message the pipeline publishes: ``messages`` of (kind, payload, qos, retain)."""

    def __init__(self, device_id="test-01"):
        from daemon import config

        NullPublisher.__init__(self, config.defaults().mqtt, device_id)
        self.messages = []

    def publish(self, kind, payload, qos=None, retain=False):
        NullPublisher.publish(self, kind, payload, qos, retain)
        self.messages.append((kind, payload, qos, retain))

    def payloads(self, kind):
        return [payload for k, payload, _, _ in self.messages if k == kind]


def run_to_the_end(pipeline):
    """Open ``pipeline``, run it until its sources end, close it; returns it."""
    pipeline.open()
    try:
        pipeline.run()
    finally:
        pipeline.close()
    return pipeline


def boxes_around(boxes, polarity="light_on_dark"):
    """``roi.boxes`` entries d0, d1, ... for (x, y, w, h) boxes, such as a meter's drums."""
    return [
        {"id": "d%d" % i, "x": x, "y": y, "w": w, "h": h, "polarity": polarity}
        for i, (x, y, w, h) in enumerate(boxes)
    ]


def shipped_model_knows_transitions():
    from daemon import model_meta

    return len(model_meta.read(MODELS / "digits.onnx")["labels"]) > model_meta.TRANSITION_CLASS


needs_meter_model = pytest.mark.skipif(
    not shipped_model_knows_transitions(),
    reason="the shipped model has no 'digit in transition' class yet (issue 13: retrain with --meter-digits)",
)
