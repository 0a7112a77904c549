"""Shared fixtures: a real Mosquitto on a free loopback port, an MQTT subscriber, the reader
as ``predict`` builds it, the MNIST test set, the payload schemas, headless Chromium. Helpers live in
tests/helpers.py and tests/synthetic.py."""

import json

import pytest

from tests.helpers import SCHEMAS, Broker, Subscriber, mosquitto_binary


@pytest.fixture(scope="module")
def reader():
    """The shipped model with the default settings, as ``predict`` reads images."""
    from daemon import config
    from daemon.reader import Reader

    loaded = Reader.from_config(config.defaults())
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
    for kind in ("prediction", "state", "stats", "meter"):
        schema = json.loads((SCHEMAS / ("%s.schema.json" % kind)).read_text())
        out[kind] = validator(schema)
    return out


@pytest.fixture
def chromium():
    import shutil

    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("Debian's chromium and chromium-driver are needed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=900,900",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=DriverService(executable_path=driver), options=options)
    yield browser
    browser.quit()
