"""systemd notify protocol without libsystemd: datagrams to $NOTIFY_SOCKET.

READY=1 once serving, STATUS=... for `systemctl status`, WATCHDOG=1 while healthy,
STOPPING=1 on shutdown. Without $NOTIFY_SOCKET every call is a no-op.
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier(object):
    """Sends sd_notify messages; ``watchdog_interval`` is half of $WATCHDOG_USEC (None if unset)."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None
        self.watchdog_interval = None
        usec = environ.get("WATCHDOG_USEC")
        watchdog_pid = environ.get("WATCHDOG_PID")
        if usec and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            try:
                self.watchdog_interval = int(usec) / 2e6
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r", usec)
        self._socket = None
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self):
        return self._socket is not None

    def send(self, *fields):
        """Send one datagram of newline-separated ``KEY=value`` fields; False when it failed."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode("utf-8"), self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status=""):
        return self.send("READY=1", "STATUS=" + status) if status else self.send("READY=1")

    def status(self, text):
        return self.send("STATUS=" + text)

    def watchdog(self):
        return self.send("WATCHDOG=1")

    def stopping(self, status="stopping"):
        return self.send("STOPPING=1", "STATUS=" + status)

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None
