"""sd_notify in this process, against a real datagram socket like systemd's."""

import os
import socket

from daemon.notify import Notifier


def listening_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    return server, path


def test_ready_status_watchdog_and_stopping_reach_systemd(tmp_path):
    server, path = listening_socket(tmp_path)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    try:
        assert notifier.enabled and notifier.watchdog_interval == 2.0
        assert notifier.ready("reading camera with tensorrt-fp16")
        assert server.recv(1024) == b"READY=1\nSTATUS=reading camera with tensorrt-fp16"
        assert notifier.watchdog() and server.recv(1024) == b"WATCHDOG=1"
        assert notifier.stopping() and server.recv(1024) == b"STOPPING=1\nSTATUS=stopping"
    finally:
        notifier.close()
        server.close()


def test_no_systemd_means_no_messages_and_no_errors():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("x") is False and notifier.watchdog() is False


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path):
    server, path = listening_socket(tmp_path)
    other = str(os.getpid() + 1)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": other})
    try:
        assert notifier.watchdog_interval is None
    finally:
        notifier.close()
        server.close()


def test_a_vanished_socket_is_logged_not_fatal(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert notifier.ready() is False
        assert "sd_notify" in caplog.text
    finally:
        notifier.close()
