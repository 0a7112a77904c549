"""Shared fixtures: a real Mosquitto on a free loopback port, an MQTT subscriber, the daemon
as a subprocess, paths to the shipped model and the MNIST test set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools.broker import Broker, Subscriber, free_port, mosquitto_binary  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLES = ROOT / "samples"
SCHEMAS = ROOT / "daemon" / "schema"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def reader():
    """The shipped model with the default settings, as ``predict`` reads images."""
    from daemon.predict import ImageReader

    loaded = ImageReader.from_config(None, [str(ROOT)])
    yield loaded
    loaded.close()


@pytest.fixture
def broker(tmp_path):
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (make test installs it with apt-get)")
    instance = Broker(tmp_path).start()
    yield instance
    instance.stop()


@pytest.fixture
def subscriber_factory():
    created = []

    def factory(port, topic="#"):
        sub = Subscriber(port, topic).start()
        created.append(sub)
        return sub

    yield factory
    for sub in created:
        sub.stop()


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
        universal_newlines=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="session")
def mnist_test():
    from engine_build import mnist

    return mnist.load_split("test")


@pytest.fixture(scope="session")
def schemas():
    import jsonschema

    # jsonschema 3.2 (the last for Python 3.6) knows draft 7, which covers what these schemas use.
    validator = getattr(jsonschema, "Draft202012Validator", None) or jsonschema.Draft7Validator
    out = {}
    for kind in ("prediction", "state", "stats"):
        schema = json.loads((SCHEMAS / ("%s.schema.json" % kind)).read_text())
        out[kind] = validator(schema)
    return out
