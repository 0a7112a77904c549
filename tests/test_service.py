"""Service behaviour of the real daemon process: sd_notify, watchdog, signals, reload, HTTP."""

import http.client
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers import ROOT, SAMPLES, free_port, run_daemon, write_config
from tests.synthetic import photo

VIDEO = str(SAMPLES / "demo.mp4")


class NotifySocket(object):
    """A real unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, set of fields)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), set(data.decode().split("\n"))))

    def times(self, field):
        return [t for t, fields in self.messages if field in fields]

    def close(self):
        self._stop.set()
        self.sock.close()


def start(tmp_path, source=None, extra_env=None, **sections):
    port = free_port()
    sections.setdefault("mqtt", {"enabled": False})
    sections.setdefault("http", {"port": port})
    config_path = write_config(
        tmp_path / "config.yaml",
        source=source or {"type": "file", "path": VIDEO, "loop": True, "realtime": True},
        backend={"type": "onnxruntime"},
        **sections,
    )
    env = dict(os.environ, **(extra_env or {}))
    process = run_daemon(config_path, env=env)
    process.http_port = sections["http"]["port"]
    process.config_path = config_path
    return process


def get(port, path, timeout=10):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def wait_http(process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("daemon exited %s: %s" % (process.returncode, process.log_path.read_text()))
        try:
            status, _, body = get(process.http_port, "/healthz", timeout=2)
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("no healthy /healthz: %s" % process.log_path.read_text())


def stop(process, timeout=15):
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


@pytest.mark.slow
def test_notify_ready_watchdog_cadence_and_stopping(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    process = start(tmp_path, extra_env=env)
    try:
        wait_http(process)
        time.sleep(3)
        ready = notify.times("READY=1")
        pings = notify.times("WATCHDOG=1")
        assert len(ready) == 1
        assert len(pings) >= 4 and all(t > ready[0] for t in pings)
        gaps = np.diff(pings)
        assert 0.35 < np.median(gaps) < 0.75
    finally:
        assert stop(process) == 0
    deadline = time.monotonic() + 5  # the collector thread may not have read it yet
    while not notify.times("STOPPING=1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notify.times("STOPPING=1"), notify.messages
    notify.close()


@pytest.mark.slow
def test_a_hung_source_stops_the_watchdog_and_fails_healthz(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a0.png"), np.full((120, 160), 220, np.uint8))
    os.mkfifo(str(folder / "a1.png"))  # reading it blocks forever: the source hangs
    notify = NotifySocket(tmp_path / "notify.sock")
    process = start(
        tmp_path,
        source={"type": "images", "path": str(folder)},
        extra_env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000"},
        service={"health_timeout_s": 1.0},
    )
    try:
        wait_http(process)
        time.sleep(3.5)
        pings = notify.times("WATCHDOG=1")
        status, _, body = get(process.http_port, "/healthz")
        assert status == 503
        detail = json.loads(body)
        assert detail["status"] == "unhealthy" and detail["last_output_age_s"] > 1.0
        assert pings, "pinged while frames flowed"
        assert time.monotonic() - pings[-1] > 1.5, "kept pinging with a hung source"
    finally:
        process.send_signal(signal.SIGKILL)  # the capture thread is stuck in a read, as systemd would find it
        process.wait(10)
        notify.close()


@pytest.mark.slow
def test_healthz_is_503_with_the_reason_while_the_source_is_down_but_the_watchdog_keeps_pinging(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    missing = tmp_path / "camera.mp4"
    process = start(
        tmp_path,
        source={"type": "file", "path": str(missing), "wait_for_source": True},
        extra_env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000"},
        service={"health_timeout_s": 1.0},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.log_path.read_text()
            try:
                status, _, body = get(process.http_port, "/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(3.0)  # well past health_timeout_s with nothing published
        status, _, body = get(process.http_port, "/healthz")
        detail = json.loads(body)
        assert status == 503, detail
        assert detail["status"] == "unhealthy" and detail["source_state"] == "reconnecting"
        assert "source" in detail["reason"] and "does not exist" in detail["reason"], detail
        pings = notify.times("WATCHDOG=1")
        assert pings and time.monotonic() - pings[-1] < 1.5, "reconnecting is not hung: keep pinging"
    finally:
        assert stop(process) == 0
        notify.close()


def test_sigterm_exits_0_quickly_and_says_offline(tmp_path, broker, subscriber_factory):
    process = start(tmp_path, mqtt={"host": "127.0.0.1", "port": broker.port})
    wait_http(process)
    watcher = subscriber_factory(broker.port)
    assert watcher.wait_for(lambda s: s.on("prediction"), timeout=30)
    started = time.monotonic()
    assert stop(process) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert watcher.wait_for(lambda s: s.on("availability") and s.on("availability")[-1][1] == b"offline", 5)
    print("SIGTERM to exit: %.2f s" % elapsed)


@pytest.mark.slow
def test_sighup_applies_a_good_config_and_keeps_running_on_a_bad_one(tmp_path):
    process = start(tmp_path)
    try:
        wait_http(process)
        data = yaml.safe_load(process.config_path.read_text())
        data["roi"] = {"size": 120}
        data["postprocess"] = {"min_confidence": 0.99}
        data["source"]["fps"] = 5  # needs a restart: logged, not applied
        process.config_path.write_text(yaml.safe_dump(data))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, _, body = get(process.http_port, "/snapshot.jpg")
            log = process.log_path.read_text()
            if "reload applied" in log:
                break
            time.sleep(0.2)
        assert "reload applied: roi.size, postprocess.min_confidence" in log
        assert "need a restart to change: source.fps" in log
        time.sleep(0.5)
        status, _, _ = get(process.http_port, "/healthz")
        assert status == 200
        process.config_path.write_text("source: {type: file, path: %s}\nroi: {size: -5}\n" % VIDEO)
        process.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        log = process.log_path.read_text()
        assert (
            "reload rejected, still running on the previous config: roi.size: -5 is below the minimum 8"
            in log
        )
        assert process.poll() is None
        assert get(process.http_port, "/healthz")[0] == 200
    finally:
        assert stop(process) == 0


def multipart(field, filename, data, content_type="image/png"):
    boundary = "----digitdtest%d" % int(time.time() * 1000)
    disposition = 'form-data; name="%s"' % field + ('; filename="%s"' % filename if filename else "")
    body = (
        (
            "--%s\r\nContent-Disposition: %s\r\nContent-Type: %s\r\n\r\n"
            % (boundary, disposition, content_type)
        ).encode()
        + data
        + ("\r\n--%s--\r\n" % boundary).encode()
    )
    return body, "multipart/form-data; boundary=%s" % boundary


def post(port, body, content_type="application/octet-stream", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    all_headers = {"Content-Type": content_type}
    all_headers.update(headers or {})
    if "Content-Length" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    connection.putrequest("POST", "/predict")
    for key, value in all_headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    try:
        connection.send(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = connection.getresponse()
    result = response.status, json.loads(response.read() or b"{}")
    connection.close()
    return result


def test_http_endpoints_and_bad_uploads(tmp_path, mnist_test):
    from prometheus_client.parser import text_string_to_metric_families

    process = start(tmp_path, http={"port": free_port(), "max_body_bytes": 200000, "max_pixels": 4000000})
    try:
        health = wait_http(process)
        assert health["backend"] == "onnxruntime-int8" and health["status"] == "ok"
        time.sleep(1.0)
        status, headers, body = get(process.http_port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["digitd_frames_out"].samples[0].value > 0
        assert families["digitd_latency_seconds"].type == "histogram"
        assert {
            "digitd_batch_size",
            "digitd_mqtt_queue",
            "digitd_source_reconnects",
            "digitd_frames_dropped",
        } <= set(families)

        status, headers, body = get(process.http_port, "/snapshot.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        snapshot = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert snapshot.shape == (480, 640, 3)
        edge = snapshot[150:330, 220:222].astype(int).reshape(-1, 3)
        assert ((edge.max(1) - edge.min(1)) > 80).mean() > 0.8  # the coloured ROI box is drawn on grey paper

        with urllib.request.urlopen(
            "http://127.0.0.1:%d/stream.mjpg" % process.http_port, timeout=10
        ) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            chunk = b""
            while chunk.count(b"--digitdframe") < 3 and len(chunk) < 3_000_000:
                chunk += stream.read1(65536)
        frames = [p for p in chunk.split(b"--digitdframe") if b"\xff\xd8" in p]
        assert len(frames) >= 2

        status, headers, body = get(process.http_port, "/")
        assert status == 200 and b"<form" in body and b"/predict" in body
        assert get(process.http_port, "/nope")[0] == 404

        image = photo(mnist_test[0][7], size=(600, 500))
        png = cv2.imencode(".png", image)[1].tobytes()
        status, result = post(process.http_port, png, "image/png")
        assert status == 200 and result["digits"][0]["digit"] == mnist_test[1][7]
        body, content_type = multipart("image", "digit.png", png)
        status, result = post(process.http_port, body, content_type)
        assert status == 200 and result["number"] == str(mnist_test[1][7])

        assert post(process.http_port, b"this is not an image")[0] == 400
        assert post(process.http_port, b"")[1]["error"] == "empty input"
        assert post(process.http_port, png[:300])[0] == 400
        huge = bytearray(png[:33])
        huge[16:24] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")
        status, result = post(process.http_port, bytes(huge))
        assert status == 400 and "exceeds the limit" in result["error"]
        status, result = post(process.http_port, b"x" * 300000)
        assert status == 413 and "exceeds the limit of 200000" in result["error"]
        body, content_type = multipart("comment", None, b"hello", "text/plain")
        status, result = post(process.http_port, body, content_type)
        assert status == 400 and "no file in the upload" in result["error"]
        assert get(process.http_port, "/healthz")[0] == 200, "bad uploads must not hurt the daemon"
    finally:
        assert stop(process) == 0


def test_a_multipart_body_of_countless_tiny_parts_is_refused_at_once(tmp_path, mnist_test):

    process = start(tmp_path)
    try:
        wait_http(process)
        body = b"--b\r\n\r\n\r\n" * 300000 + b"--b--\r\n"  # 2.7 MB of empty parts
        started = time.monotonic()
        status, result = post(process.http_port, body, "multipart/form-data; boundary=b")
        elapsed = time.monotonic() - started
        assert status == 400 and "too many parts" in result["error"], result
        assert elapsed < 5, "%.1f s for a refused body" % elapsed
        png = cv2.imencode(".png", photo(mnist_test[0][7], size=(600, 500)))[1].tobytes()
        body, content_type = multipart("image", "digit.png", png)
        status, result = post(process.http_port, body, content_type)
        assert status == 200 and result["number"] == str(mnist_test[1][7]), "an ordinary upload still works"
    finally:
        assert stop(process) == 0


def test_idle_http_connections_are_closed_and_capped(tmp_path):
    port = free_port()
    # The server takes connections in the order they came, so the request below waits behind
    # the three idle ones; they hold their slots until they have been idle idle_timeout_s,
    # which leaves a busy machine seconds to send it.
    process = start(tmp_path, http={"port": port, "idle_timeout_s": 5.0, "max_connections": 3})
    idle = []
    try:
        wait_http(process)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
        status, _, body = get(port, "/healthz")
        assert status == 503 and json.loads(body)["error"] == "too many connections", body
        for sock in idle:  # the server hangs up on a client that says nothing
            started = time.monotonic()
            assert sock.recv(1) == b"", "an idle connection must be closed"
            assert time.monotonic() - started < 20
        assert get(port, "/healthz")[0] == 200, "slots are free again"
    finally:
        for sock in idle:
            sock.close()
        assert stop(process) == 0


def test_http_binds_to_localhost_by_default():
    from daemon import config

    assert config.from_dict({"source": {"type": "v4l2"}}).http.bind == "127.0.0.1"


def test_upload_page_in_headless_chromium(tmp_path, mnist_test, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    process = start(tmp_path)
    try:
        wait_http(process)
        picture = tmp_path / "my digit.png"
        cv2.imwrite(str(picture), photo(mnist_test[0][21], size=(800, 600)))
        chromium.get("http://127.0.0.1:%d/" % process.http_port)
        chromium.find_element(By.ID, "file").send_keys(str(picture))
        chromium.find_element(By.ID, "send").click()
        number = WebDriverWait(chromium, 20).until(
            expected_conditions.presence_of_element_located((By.ID, "number"))
        )
        assert number.text == str(mnist_test[1][21])
        assert "confidence" in chromium.find_element(By.ID, "result").text
        docs = os.environ.get("DIGITD_UPDATE_DOCS")
        if docs:
            chromium.save_screenshot(str(ROOT / "docs" / "upload-page.png"))
            status, _, body = get(process.http_port, "/snapshot.jpg")
            cv2.imwrite(str(ROOT / "docs" / "snapshot.png"), cv2.imdecode(np.frombuffer(body, np.uint8), 1))
    finally:
        assert stop(process) == 0


def test_a_burst_of_big_uploads_gets_503_beyond_two_and_the_camera_keeps_publishing(tmp_path, mnist_test):
    """Eight 24-megapixel uploads at once: two are read, the rest are told to come back
    (503, Retry-After), and the camera's frames keep being published meanwhile (the backend
    is held only while it runs, not while an upload is decoded and prepared)."""

    process = start(tmp_path, http={"port": free_port(), "max_body_bytes": 30000000})
    try:
        wait_http(process)
        big = cv2.resize(photo(mnist_test[0][0]), (5600, 4200))
        body = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        frames_before = json.loads(get(process.http_port, "/healthz")[2])["frames_out"]
        answers = []

        def upload():
            connection = http.client.HTTPConnection("127.0.0.1", process.http_port, timeout=120)
            connection.request("POST", "/predict", body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            answers.append((response.status, response.getheader("Retry-After"), json.loads(response.read())))
            connection.close()

        threads = [threading.Thread(target=upload) for _ in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        elapsed = time.monotonic() - started
        frames_after = json.loads(get(process.http_port, "/healthz")[2])["frames_out"]
        statuses = sorted(status for status, _, _ in answers)
        assert len(answers) == 8 and set(statuses) <= {200, 503}, answers
        assert 1 <= statuses.count(200) <= 7 and statuses.count(503) >= 1, statuses
        busy = [a for a in answers if a[0] == 503]
        assert all(retry == "1" and "try again" in result["error"] for _, retry, result in busy)
        # the file source is paced at its own 30 fps: a camera starved by uploads would stall
        assert frames_after - frames_before >= 5 * elapsed, (frames_before, frames_after, elapsed)
    finally:
        assert stop(process) == 0
