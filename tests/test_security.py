"""MQTT over TLS with a password file on Mosquitto; wrong passwords; anonymous clients refused.

A throw-away CA and certificates are made with openssl for each test run.
"""

import shutil
import signal
import ssl
import subprocess
import threading
import time

import pytest

from tests.helpers import SAMPLES, Broker, free_port, run_daemon, write_config
from tools.broker import make_mqtt_client

pytestmark = pytest.mark.mqtt
SECRET = "s3cret-Pa55word-never-logged"


def openssl(*args, cwd):
    subprocess.run(
        ["openssl"] + list(args), cwd=str(cwd), check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("openssl and mosquitto_passwd (package mosquitto) are needed")
    folder = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=digitd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=folder,
    )
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=folder,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
        cwd=folder,
    )
    passwords = folder / "passwords"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "digitd", SECRET], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "reader", "reader-pass"], check=True)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.fixture
def tls_broker(tmp_path, pki):
    port = free_port()
    text = (
        "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nallow_anonymous false\npassword_file %s\n"
        % (port, pki / "ca.crt", pki / "server.crt", pki / "server.key", pki / "passwords")
    )
    broker = Broker(tmp_path, port=port, config_text=text).start()
    yield broker
    broker.stop()


class TlsSubscriber(object):
    def __init__(self, port, pki, username="reader", password="reader-pass"):
        self.messages = []
        self.refused = None
        self.connected = threading.Event()
        self.client = make_mqtt_client("tls-sub-%d" % id(self))
        self.client.tls_set(ca_certs=str(pki / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, *args):
        code = getattr(reason, "value", reason)
        if code == 0:
            client.subscribe("digitd/#", qos=1)
            self.connected.set()
        else:
            self.refused = code
            client.disconnect()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def daemon_config(tmp_path, pki, port, password):
    return write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(SAMPLES / "demo.mp4"), "loop": True, "realtime": True},
        backend={"type": "onnxruntime"},
        http={"enabled": False},
        mqtt={
            "host": "localhost",
            "port": port,
            "username": "digitd",
            "password": password,
            "tls": {"enabled": True, "ca_file": str(pki / "ca.crt")},
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 2,
        },
    )


def test_daemon_publishes_over_tls_with_a_password_from_the_environment(tmp_path, pki, tls_broker):
    subscriber = TlsSubscriber(tls_broker.port, pki)
    assert subscriber.connected.wait(10)
    config = daemon_config(tmp_path, pki, tls_broker.port, "${DIGITD_MQTT_PASSWORD}")
    import os

    process = run_daemon(config, env=dict(os.environ, DIGITD_MQTT_PASSWORD=SECRET))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            t.endswith("/prediction") for t, _ in subscriber.messages
        ):
            time.sleep(0.1)
        assert any(t.endswith("/prediction") for t, _ in subscriber.messages), process.log_path.read_text()
        assert ("digitd/test-01/availability", b"online") in subscriber.messages
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        subscriber.stop()
    assert SECRET not in process.log_path.read_text()


@pytest.mark.slow
def test_wrong_password_is_a_clear_error_retried_with_backoff_and_never_logged(tmp_path, pki, tls_broker):
    wrong = "wrong-" + SECRET
    process = run_daemon(daemon_config(tmp_path, pki, tls_broker.port, wrong))
    try:
        time.sleep(6)
        assert process.poll() is None, "a refused login must not kill the daemon"
        log = process.log_path.read_text()
        assert log.count("refused the connection") == 1, "reported once, then only now and then: " + log
        attempts = tls_broker.log_path.read_text().count("New connection from")
        assert attempts >= 2, "retried with backoff"
        assert "not authorised" in log or "bad user name or password" in log
        assert wrong not in log and SECRET not in log
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_broker_refuses_anonymous_clients_and_plain_tcp(pki, tls_broker):
    anonymous = TlsSubscriber(tls_broker.port, pki, username=None)
    deadline = time.monotonic() + 10
    while anonymous.refused is None and time.monotonic() < deadline:
        time.sleep(0.05)
    anonymous.stop()
    assert anonymous.refused in (4, 5, 134, 135)  # bad credentials / not authorised (MQTT 3.1.1 or 5)
    plain = make_mqtt_client("plain")
    with pytest.raises((OSError, ssl.SSLError, ConnectionError)):
        plain.connect("127.0.0.1", tls_broker.port, 5)
        plain.loop(timeout=2)
        plain.loop(timeout=2)
        if not plain.is_connected():
            raise ConnectionError("not connected over plain TCP")
