"""A private Mosquitto process on a free loopback port (demo, tests, benchmarks)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary():
    """Path of the mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None


class Broker(object):
    """Mosquitto with its own config; ``config_text`` replaces the default anonymous listener."""

    def __init__(self, workdir, port=None, config_text="", persistent=False):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.config_text = config_text
        self.persistent = persistent
        self.process = None
        self.log_path = self.workdir / ("mosquitto-%d.log" % self.port)

    def start(self, timeout=10.0):
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        conf = self.workdir / ("mosquitto-%d.conf" % self.port)
        text = self.config_text or "listener %d 127.0.0.1\nallow_anonymous true\n" % self.port
        if os.geteuid() == 0:
            text += "user root\n"  # else mosquitto drops to its own user, who cannot write here
        if self.persistent:  # sessions and queued QoS 1 messages survive a restart
            text += (
                "persistence true\npersistence_location %s/\nautosave_interval 1\nmax_queued_messages 100000\n"
                % (self.workdir)
            )
        else:
            text += "persistence false\n"
        conf.write_text(text)
        with open(str(self.log_path), "ab") as log_file:
            self.process = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("mosquitto exited: %s" % self.log_path.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on port %d" % self.port)

    def wait_saved(self, timeout=10.0):
        """With persistence: wait for the next save of the in-memory database (sessions included)."""
        marker = "Saving in-memory database"
        before = self.log_path.read_text().count(marker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_path.read_text().count(marker) > before:
                return True
            time.sleep(0.1)
        return False

    def kill(self):
        """SIGKILL, like a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def make_mqtt_client(client_id, clean_session=True):
    import paho.mqtt.client as mqtt

    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
    return mqtt.Client(client_id=client_id, clean_session=clean_session)


class Subscriber(object):
    """Collects every message on ``topic`` (with retain flags) from a real broker."""

    def __init__(self, port, topic="#", client_id=None, clean_session=True):
        self.messages = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = make_mqtt_client(client_id or "test-sub-%d-%d" % (os.getpid(), id(self)), clean_session)
        self.client.on_connect = lambda c, u, f, rc, *a: (c.subscribe(topic, qos=1), self._connected.set())
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def start(self):
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", self.port, 30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("subscriber could not connect")
        time.sleep(0.2)  # let the SUBACK arrive
        return self

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix):
        with self._lock:
            return [(t, p, r) for t, p, r in self.messages if t.endswith("/" + suffix)]

    def payloads(self, suffix):
        return [json.loads(p.decode("utf-8")) for _, p, _ in self.on(suffix)]

    def wait_for(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)
