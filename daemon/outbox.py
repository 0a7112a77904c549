"""Bounded outboxes for MQTT messages: in memory, or durable in SQLite (``mqtt.spool_path``).

A message is *pending* until the sender takes it, then *handed* (given to paho) until
the broker acknowledges it. Both count towards the bound; when full, the oldest
pending message is dropped (and counted). The durable outbox deletes a row only on
acknowledgement, so whatever was not acknowledged is sent again after a restart,
in order (at least once, like QoS 1 itself). Not thread-safe: the publisher locks.
"""

import collections
import logging
import os
import sqlite3
import time

log = logging.getLogger(__name__)


class Message(object):
    __slots__ = ("topic", "payload", "qos", "retain")

    def __init__(self, topic, payload, qos, retain):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain


class MemoryOutbox(object):
    """deque of pending (key, message) plus a dict of handed ones."""

    def __init__(self, limit):
        self.limit = limit
        self._pending = collections.deque()
        self._handed = {}
        self._next_key = 0

    def __len__(self):
        return len(self._pending) + len(self._handed)

    def pending_count(self):
        return len(self._pending)

    def handed_count(self):
        return len(self._handed)

    def append(self, message):
        """Add a message; returns how many old ones were dropped to make room (0 or 1)."""
        dropped = 0
        if len(self) >= self.limit and self._pending:
            self._drop_oldest()
            dropped = 1
        self._next_key += 1
        self._store(self._next_key, message)
        self._pending.append((self._next_key, message))
        return dropped

    def take(self):
        """Oldest pending (key, message), now handed; None when nothing is pending."""
        if not self._pending:
            return None
        key, message = self._pending.popleft()
        self._handed[key] = message
        return key, message

    def give_back(self, key):
        """A taken message could not be handed over: it becomes the oldest pending again."""
        message = self._handed.pop(key)
        self._pending.appendleft((key, message))

    def ack(self, key):
        if self._handed.pop(key, None) is not None:
            self._delete(key)

    durable = False  # True while every message is also on disk
    spool_failures = 0  # messages that could not be written to the spool (lost on a restart)
    dropped_at_start = 0  # spooled messages dropped at start to fit a smaller limit

    def close(self):
        pass

    def _drop_oldest(self):
        key, _ = self._pending.popleft()
        self._delete(key)

    def _store(self, key, message):
        pass

    def _delete(self, key):
        pass


class SpoolError(Exception):
    """The spool file cannot be created or written where ``mqtt.spool_path`` points."""


class SqliteOutbox(MemoryOutbox):
    """The same, mirrored in an SQLite file that survives restarts.

    A file SQLite cannot read (corrupt, truncated) is moved aside to
    ``<path>.corrupt-<time>`` and a fresh spool started; a place that cannot be
    written raises SpoolError.
    """

    def __init__(self, limit, path):
        MemoryOutbox.__init__(self, limit)
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory)
        except OSError as exc:
            raise SpoolError("mqtt.spool_path: cannot create the directory of %s (%s)" % (path, exc)) from exc
        self._db = None
        try:
            rows = self._open(path)
        except sqlite3.OperationalError as exc:
            raise SpoolError("mqtt.spool_path: cannot open or write %s (%s)" % (path, exc)) from exc
        except sqlite3.DatabaseError as exc:
            self._move_aside(path, exc)
            try:
                rows = self._open(path)
            except sqlite3.DatabaseError as again:
                raise SpoolError(
                    "mqtt.spool_path: cannot start a fresh spool %s (%s)" % (path, again)
                ) from again
        for key, topic, payload, qos, retain in rows:
            self._pending.append((key, Message(topic, bytes(payload), qos, bool(retain))))
        self._next_key = rows[-1][0] if rows else 0
        if rows:
            log.info(
                "MQTT spool %s: %d message(s) from before the restart will be sent first", path, len(rows)
            )
        while len(self) > self.limit:
            self._drop_oldest()
            self.dropped_at_start += 1
        if self.dropped_at_start:
            log.warning(
                "MQTT spool %s: dropped the %d oldest message(s) to fit mqtt.queue_size %d",
                path,
                self.dropped_at_start,
                limit,
            )

    def _open(self, path):
        """Connect and read every spooled row; the connection is closed again on failure."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
                "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
            )
            rows = db.execute("SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id").fetchall()
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return rows

    @staticmethod
    def _move_aside(path, error):
        """Rename an unreadable spool (and its WAL files) so a fresh one can start."""
        aside = "%s.corrupt-%s" % (path, time.strftime("%Y%m%dT%H%M%S"))
        try:
            os.rename(path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.rename(path + suffix, aside + suffix)
        except OSError as exc:
            raise SpoolError(
                "mqtt.spool_path: %s is unreadable (%s) and cannot be moved aside (%s)" % (path, error, exc)
            ) from exc
        log.error(
            "MQTT spool %s is corrupt (%s): moved aside to %s; starting a fresh spool; "
            "its unsent messages are lost",
            path,
            error,
            aside,
        )

    @property
    def durable(self):
        return self._db is not None

    def _store(self, key, message):
        if self._db is not None:
            try:
                self._db.execute(
                    "INSERT INTO outbox (id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                    (key, message.topic, sqlite3.Binary(message.payload), message.qos, int(message.retain)),
                )
                return
            except sqlite3.Error as exc:
                self._give_up_spool(exc)
        self.spool_failures += 1

    def _delete(self, key):
        if self._db is None:
            return
        try:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (key,))
        except sqlite3.Error as exc:
            self._give_up_spool(exc)

    def _give_up_spool(self, error):
        """A write failed (disk full, I/O error): carry on in memory, which the base class keeps anyway."""
        log.error(
            "MQTT spool %s: write failed (%s); keeping messages in memory only until the next start "
            "(they are lost if the daemon stops before the broker has them; rows already on disk "
            "may be sent again)",
            self.path,
            error,
        )
        db, self._db = self._db, None
        try:
            db.close()
        except sqlite3.Error as exc:
            log.warning("MQTT spool %s: close failed: %s", self.path, exc)

    def close(self):
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error as exc:
                log.warning("MQTT spool %s: close failed: %s", self.path, exc)


def create_outbox(limit, spool_path=""):
    return SqliteOutbox(limit, spool_path) if spool_path else MemoryOutbox(limit)
