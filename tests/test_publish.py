"""MQTT publishing (daemon/publish.py) as a user of the real daemon sees it when the broker
cannot be reached: the reason must be in the log (once, then now and then), /healthz and stats."""

import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.helpers import SAMPLES, Broker, Subscriber, free_port, run_daemon, write_config

pytestmark = pytest.mark.mqtt
VIDEO = SAMPLES / "demo.mp4"


def start_daemon(tmp_path, port, **mqtt):
    http_port = free_port()
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1,
        "keepalive_s": 5,
    }
    settings.update(mqtt)
    config = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(VIDEO), "loop": True, "realtime": True},
        backend={"type": "onnxruntime"},
        mqtt=settings,
        http={"port": http_port},
        stats_interval_s=1,
    )
    process = run_daemon(config)
    process.http_port = http_port
    return process


def healthz(process):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % process.http_port, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def wait_for_log(process, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in process.log_path.read_text():
            return True
        assert process.poll() is None, process.log_path.read_text()
        time.sleep(0.2)
    return False


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()


class SilentServer(object):
    """Accepts TCP connections and never answers: a broker that hangs before CONNACK."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def tls_broker(tmp_path):
    """Mosquitto with a self-signed certificate the daemon has no reason to trust."""
    key, cert = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    port = free_port()
    text = "listener %d 127.0.0.1\ncertfile %s\nkeyfile %s\nallow_anonymous true\n" % (port, cert, key)
    return Broker(tmp_path, port=port, config_text=text).start()


def auth_broker(tmp_path):
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "digitd", "right-one"],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    port = free_port()
    text = "listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n" % (port, passwords)
    return Broker(tmp_path, port=port, config_text=text).start()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("closed port", "refused"),
        ("no CONNACK", "CONNACK"),
        ("untrusted TLS", "certificate verify failed"),
        ("wrong password", "mqtt.password"),
    ],
)
@pytest.mark.slow
def test_each_connection_failure_is_logged_once_with_its_reason_and_shown_in_healthz(
    tmp_path, case, expected
):
    server = None
    mqtt = {}
    if case == "closed port":
        port = free_port()
    elif case == "no CONNACK":
        server = SilentServer()
        port = server.port
    elif case == "untrusted TLS":
        server = tls_broker(tmp_path)
        port = server.port
        mqtt = {"tls": {"enabled": True}}
    else:
        server = auth_broker(tmp_path)
        port = server.port
        mqtt = {"username": "digitd", "password": "wrong-one"}
    process = start_daemon(tmp_path, port, **mqtt)
    try:
        assert wait_for_log(process, expected, timeout=30), process.log_path.read_text()
        time.sleep(6)  # many more attempts (backoff 0.2 .. 1 s; no-CONNACK attempts take keepalive_s = 5 s)
        log = process.log_path.read_text()
        failures = [line for line in log.splitlines() if expected in line]
        assert len(failures) == 1, "logged %d times:\n%s" % (len(failures), log)
        assert "wrong-one" not in log
        health = healthz(process)
        assert expected in health["mqtt_last_error"] and health["mqtt_connected"] is False
    finally:
        assert stop(process) == 0
        if server is not None:
            server.stop() if isinstance(server, Broker) else server.close()


def test_the_stats_payload_tells_why_the_broker_was_away(tmp_path, schemas):
    port = free_port()
    process = start_daemon(tmp_path, port)
    broker = subscriber = None
    try:
        assert wait_for_log(process, "refused", timeout=30), process.log_path.read_text()
        broker = Broker(tmp_path, port=port).start()
        subscriber = Subscriber(port, "digitd/test-01/stats").start()
        assert subscriber.wait_for(lambda s: s.payloads("stats"), timeout=30), process.log_path.read_text()
        stats = subscriber.payloads("stats")[-1]
        schemas["stats"].validate(stats)
        assert "refused" in stats["mqtt_last_error"]
    finally:
        assert stop(process) == 0
        if subscriber is not None:
            subscriber.stop()
        if broker is not None:
            broker.stop()
