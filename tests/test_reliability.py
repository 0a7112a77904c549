"""Did I lose readings? Broker outages, queue overflow, the durable outbox and failing sources,
against a real Mosquitto (with persistence, so a subscriber's session survives its restarts)."""

import json
import re
import shutil
import signal
import sqlite3
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.helpers import SAMPLES, Broker, Subscriber, free_port, run_daemon, write_config

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
VIDEO = SAMPLES / "demo.mp4"
FRAMES = 240


def persistent_subscriber(port, name):
    return Subscriber(port, "digitd/test-01/#", client_id=name, clean_session=False)


def prepare_session(tmp_path, port, name):
    """Register a persistent subscription, then leave: the broker queues QoS 1 messages for it."""
    broker = Broker(tmp_path, port=port, persistent=True).start()
    subscriber = persistent_subscriber(port, name).start()
    subscriber.stop()
    broker.stop()


def daemon_config(tmp_path, port, **mqtt):
    settings = {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1}
    settings.update(mqtt)
    return write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(VIDEO), "realtime": True},
        backend={"type": "onnxruntime"},
        mqtt=settings,
        http={"enabled": False},
        stats_interval_s=60,
    )


def frames_of(subscriber):
    return [p["frame"] for p in subscriber.payloads("prediction")]


def final_stats(process):
    """(frames in, frames out) from the daemon's closing log line."""
    match = re.findall(r"stopped after (\d+) frames in, (\d+) out", process.log_path.read_text())
    return [int(v) for v in match[-1]] if match else None


def healthz(port):
    """/healthz's JSON, whatever the status code."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def test_broker_down_at_boot_every_prediction_arrives(tmp_path):
    port = free_port()
    prepare_session(tmp_path, port, "boot-sub")
    process = run_daemon(daemon_config(tmp_path, port))
    time.sleep(3.0)  # the daemon reads frames and queues them; no broker
    broker = Broker(tmp_path, port=port, persistent=True).start()
    subscriber = persistent_subscriber(port, "boot-sub").start()
    try:
        assert process.wait(60) == 0, process.log_path.read_text()
        frames_in, frames_out = final_stats(process)
        assert subscriber.wait_for(lambda s: len(set(frames_of(s))) >= frames_out, timeout=15)
        received = frames_of(subscriber)
        assert len(set(received)) == frames_out, "lost %d" % (frames_out - len(set(received)))
        assert max(received) == FRAMES
        assert subscriber.on("availability")[-1][1] == b"offline"
    finally:
        subscriber.stop()
        broker.stop()


def test_broker_killed_mid_run_loses_nothing_and_comes_back_online(tmp_path, capsys):
    port = free_port()
    broker = Broker(tmp_path, port=port, persistent=True).start()
    subscriber = persistent_subscriber(port, "kill-sub").start()
    assert broker.wait_saved(), "the subscriber's session must be on disk before the crash"
    process = run_daemon(daemon_config(tmp_path, port))
    try:
        assert subscriber.wait_for(lambda s: len(frames_of(s)) > 30, timeout=60), process.log_path.read_text()
        broker.kill()  # kill -9, like a crash
        killed_at = time.monotonic()
        time.sleep(3.0)
        broker = Broker(tmp_path, port=port, persistent=True).start()
        assert process.wait(60) == 0, process.log_path.read_text()
        frames_in, frames_out = final_stats(process)
        subscriber.wait_for(lambda s: len(set(frames_of(s))) >= frames_out, timeout=15)
        received = frames_of(subscriber)
        lost = frames_out - len(set(received))
        duplicated = len(received) - len(set(received))
        availability = [p for _, p, _ in subscriber.on("availability")]
        assert availability[-2:] == [
            b"online",
            b"offline",
        ]  # back online after the outage, offline at the end
        assert subscriber.payloads("stats")[-1]["mqtt_connects"] == 2
        outage = re.findall(r"connected to \S+ \(after ([\d.]+) s\)", process.log_path.read_text())
        with capsys.disabled():
            print(
                "\nbroker kill -9: frames sent %d, received %d unique, lost %d, duplicated %d, reconnect after %s s "
                "(broker down %.1f s)" % (frames_out, len(set(received)), lost, duplicated, outage[-1], 3.0)
            )
        assert lost == 0
        assert time.monotonic() - killed_at < 60
    finally:
        subscriber.stop()
        broker.stop()


def test_overflow_drops_the_oldest_counts_them_and_logs_once(tmp_path):
    port = free_port()
    prepare_session(tmp_path, port, "overflow-sub")
    process = run_daemon(daemon_config(tmp_path, port, queue_size=40))
    time.sleep(4.0)  # ~100 frames, each a prediction (+ a state when it changes) into a queue of 40
    broker = Broker(tmp_path, port=port, persistent=True).start()
    subscriber = persistent_subscriber(port, "overflow-sub").start()
    try:
        assert process.wait(60) == 0
        frames_in, frames_out = final_stats(process)
        assert subscriber.wait_for(lambda s: frames_of(s) and max(frames_of(s)) == FRAMES, timeout=15)
        received = sorted(set(frames_of(subscriber)))
        missing = frames_out - len(received)
        assert missing > 20, "the outage must have overflowed the queue"
        # the oldest were dropped: what arrived is one contiguous run up to the end
        assert received == list(range(received[0], received[0] + len(received)))
        log = process.log_path.read_text()
        assert log.count("outbox full (40)") == 1
        stats = subscriber.payloads("stats")
        assert stats and stats[-1]["mqtt_dropped"] >= missing
    finally:
        subscriber.stop()
        broker.stop()


def test_spool_keeps_unacknowledged_predictions_across_a_restart(tmp_path):
    port = free_port()
    spool = tmp_path / "state" / "outbox.sqlite"
    config = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(VIDEO)},
        backend={"type": "onnxruntime"},
        mqtt={
            "host": "127.0.0.1",
            "port": port,
            "spool_path": str(spool),
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1,
        },
        http={"enabled": False},
        stats_interval_s=60,
    )
    first = run_daemon(config, "--max-frames", "50")  # broker down all along
    assert first.wait(60) == 0, first.log_path.read_text()
    assert "not acknowledged at shutdown: kept in" in first.log_path.read_text()
    with sqlite3.connect(str(spool)) as db:
        spooled = db.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    spooled_frames = [json.loads(p)["frame"] for t, p in spooled if t.endswith("/prediction")]
    assert spooled_frames == list(range(1, 51))
    broker = Broker(tmp_path, port=port).start()
    subscriber = Subscriber(port, "digitd/test-01/prediction").start()
    try:
        second = run_daemon(config, "--max-frames", "10")
        assert second.wait(60) == 0, second.log_path.read_text()
        assert subscriber.wait_for(lambda s: len(frames_of(s)) >= 60, timeout=15)
        assert frames_of(subscriber) == list(range(1, 51)) + list(range(1, 11)), "old first, in order, once"
        with sqlite3.connect(str(spool)) as db:
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        subscriber.stop()
        broker.stop()


def test_source_that_breaks_is_reopened_and_the_daemon_stays_online(tmp_path, broker, subscriber_factory):
    video = tmp_path / "clip.mp4"
    shutil.copy(str(VIDEO), str(video))
    http_port = free_port()
    config = write_config(
        tmp_path / "config.yaml",
        source={
            "type": "file",
            "path": str(video),
            "loop": True,
            "realtime": True,
            "reopen_initial_delay_s": 0.2,
            "reopen_max_delay_s": 1.0,
        },
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
        http={"port": http_port},
        stats_interval_s=1,
    )
    watcher = subscriber_factory(broker.port)
    process = run_daemon(config)
    try:
        assert watcher.wait_for(lambda s: len(s.on("prediction")) > 10, timeout=60), (
            process.log_path.read_text()
        )
        video.write_bytes(VIDEO.read_bytes()[:20000])  # truncated mid-run
        time.sleep(4)
        video.unlink()  # then gone altogether
        time.sleep(3)
        stats = watcher.payloads("stats")[-1]
        assert stats["source_state"] == "reconnecting" and stats["source_reconnects"] >= 1
        health = healthz(http_port)  # 200 or, once nothing was published for health_timeout_s, 503
        assert health["source_state"] == "reconnecting" and health["source_reconnects"] >= 1
        assert process.poll() is None
        assert watcher.on("availability")[-1][1] == b"online"
        seen = len(watcher.on("prediction"))
        shutil.copy(str(VIDEO), str(video))  # the file is back
        assert watcher.wait_for(lambda s: len(s.on("prediction")) > seen + 10, timeout=30), (
            process.log_path.read_text()
        )
        log = process.log_path.read_text()
        assert "reopen failed" in log and "reopened" in log and "Traceback" not in log
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def spool_config(tmp_path, port, spool):
    return write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(VIDEO)},
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": port, "spool_path": str(spool)},
        http={"enabled": False},
        stats_interval_s=60,
    )


def truncated_spool_bytes(tmp_path):
    """Half of a real spool with a few thousand rows, as a crash or a full card may leave it."""
    whole = tmp_path / "whole.sqlite"
    with sqlite3.connect(str(whole)) as db:
        db.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
            "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
        )
        db.executemany(
            "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, 1, 0)",
            [("digitd/test-01/prediction", b"x" * 200)] * 3000,
        )
    data = whole.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_spool_is_moved_aside_and_a_fresh_one_is_used(tmp_path, broker, subscriber_factory, damage):
    spool = tmp_path / "state" / "outbox.sqlite"
    spool.parent.mkdir()
    damaged = b"this is not an SQLite file\n" * 50 if damage == "garbage" else truncated_spool_bytes(tmp_path)
    spool.write_bytes(damaged)
    subscriber = subscriber_factory(broker.port, "digitd/test-01/prediction")
    process = run_daemon(spool_config(tmp_path, broker.port, spool), "--max-frames", "10")
    assert process.wait(60) == 0, process.log_path.read_text()
    assert subscriber.wait_for(lambda s: len(frames_of(s)) >= 10, timeout=15), process.log_path.read_text()
    assert frames_of(subscriber) == list(range(1, 11))
    aside = list(spool.parent.glob("outbox.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged, sorted(spool.parent.iterdir())
    log = process.log_path.read_text()
    assert "Traceback" not in log
    assert "corrupt" in log and aside[0].name in log
    with sqlite3.connect(str(spool)) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: a read-only tmpfs when we are root (root ignores modes)."""
    import os
    import subprocess

    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)])
        if mounted.returncode != 0:
            pytest.skip("root but mount is not permitted here: cannot make a directory root cannot write")
        yield folder
        subprocess.run(["umount", str(folder)])
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_an_unwritable_spool_is_a_configuration_error(tmp_path, read_only_dir):
    process = run_daemon(spool_config(tmp_path, free_port(), read_only_dir / "outbox.sqlite"))
    assert process.wait(60) == 78, process.log_path.read_text()
    log = process.log_path.read_text()
    assert "Traceback" not in log
    assert "mqtt.spool_path" in log and str(read_only_dir / "outbox.sqlite") in log


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB tmpfs: the spool's disk fills up after a few hundred messages."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "spool"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted in this sandbox")
    yield folder
    subprocess.run(["umount", "-l", str(folder)])


def test_a_full_disk_under_the_spool_keeps_the_daemon_serving_and_stoppable(tmp_path, tiny_tmpfs, schemas):
    """Real tmpfs of 256 KiB as the spool directory (mount -t tmpfs -o size=256k), broker away,
    a looping file: the spool fills up; the daemon must carry on in memory, count it and stop
    on SIGTERM."""
    port, http_port = free_port(), free_port()
    config = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(VIDEO), "loop": True, "realtime": True},
        backend={"type": "onnxruntime"},
        mqtt={
            "host": "127.0.0.1",
            "port": port,
            "spool_path": str(tiny_tmpfs / "outbox.sqlite"),
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1,
        },
        http={"port": http_port},
        stats_interval_s=1,
    )
    process = run_daemon(config)
    broker = subscriber = None
    try:
        deadline = time.monotonic() + 120
        while "database or disk is full" not in process.log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, process.log_path.read_text()
            time.sleep(0.5)
        time.sleep(1.0)
        before = healthz(http_port)["frames_out"]
        time.sleep(4.0)
        assert healthz(http_port)["frames_out"] > before + 20, "inference stopped when the disk filled up"
        broker = Broker(tmp_path, port=port).start()
        subscriber = Subscriber(port, "digitd/test-01/#").start()
        assert subscriber.wait_for(
            lambda s: any(p.get("mqtt_spool_failures", 0) > 0 for p in s.payloads("stats")), timeout=30
        ), process.log_path.read_text()
        for payload in subscriber.payloads("stats"):
            schemas["stats"].validate(payload)
        assert subscriber.wait_for(lambda s: len(s.on("prediction")) > 10, timeout=15)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.log_path.read_text()
        log = process.log_path.read_text()
        assert "Exception in thread" not in log, log
        assert "in memory only" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if subscriber is not None:
            subscriber.stop()
        if broker is not None:
            broker.stop()


def test_a_smaller_queue_size_after_a_restart_counts_the_spooled_messages_it_drops(tmp_path):
    port = free_port()
    spool = tmp_path / "state" / "outbox.sqlite"
    write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(VIDEO)},
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": port, "spool_path": str(spool), "queue_size": 100},
        http={"enabled": False},
        stats_interval_s=60,
    )
    first = run_daemon(tmp_path / "config.yaml", "--max-frames", "50")  # broker down: all spooled
    assert first.wait(60) == 0, first.log_path.read_text()
    with sqlite3.connect(str(spool)) as db:
        spooled = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert spooled > 50
    config = spool_config(tmp_path, port, spool)
    data = yaml.safe_load(config.read_text())
    data["mqtt"]["queue_size"] = 10
    config.write_text(yaml.safe_dump(data))
    broker = Broker(tmp_path, port=port).start()
    subscriber = Subscriber(port, "digitd/test-01/stats").start()
    try:
        second = run_daemon(config, "--max-frames", "1")
        assert second.wait(60) == 0, second.log_path.read_text()
        assert subscriber.wait_for(lambda s: s.payloads("stats"), timeout=15), second.log_path.read_text()
        assert subscriber.payloads("stats")[-1]["mqtt_dropped"] >= spooled - 10
        assert "queue_size" in second.log_path.read_text()
    finally:
        subscriber.stop()
        broker.stop()
