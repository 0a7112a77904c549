"""MQTT publishing with paho-mqtt 1.6 or 2.x.

Topics under ``<prefix>/<device_id>/``: ``availability`` (retained, last will
``offline``), ``prediction``, ``state`` (retained) and ``stats``. Messages go
through a bounded outbox: while the broker is away they wait there (the oldest
are dropped when it is full, and counted); once connected they are handed to
paho, which keeps QoS 1/2 messages until the broker acknowledges them, across
reconnects.
"""

import json
import logging
import socket
import ssl
import threading
import time

from daemon.outbox import Message, create_outbox

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
MAX_HANDED_TO_PAHO = 64  # messages given to paho and not yet acknowledged
ERROR_LOG_FIRST_REPEAT_S = 10.0  # the same connection error is logged again after 10 s, 20 s, 40 s ...
ERROR_LOG_MAX_REPEAT_S = 600.0
MQTT_ERR_KEEPALIVE = 16  # paho 1.x on_disconnect rc when no packet (e.g. CONNACK) came within keepalive

_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "broker unavailable",
    4: "bad user name or password (check mqtt.username and mqtt.password)",
    5: "not authorised (check mqtt.username and mqtt.password)",
    # paho-mqtt 2.x reports MQTT 5 reason codes, also for MQTT 3.1.1 brokers
    134: "bad user name or password (check mqtt.username and mqtt.password)",
    135: "not authorised (check mqtt.username and mqtt.password)",
}


def _guarded(callback):
    """Wrap a paho callback: an exception must not end paho's network thread."""

    def guarded(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception:  # noqa: BLE001 - logged; paho would otherwise die silently
            log.exception("MQTT: %s failed", callback.__name__)
            return None

    return guarded


def _client_class(mqtt, on_connect_error):
    """paho's Client whose failed connection attempts are reported: paho catches the OSError
    (refused, timeout, TLS verification) in its network thread and only logs it at DEBUG."""

    class Client(mqtt.Client):
        def reconnect(self):
            try:
                return mqtt.Client.reconnect(self)
            except OSError as exc:
                on_connect_error(exc)
                raise

    return Client


def describe_connect_error(exc, host, port):
    """A short reason for a failed TCP/TLS connection attempt."""
    where = "%s:%d" % (host, port)
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or getattr(exc, "verify_message", None):
            return "TLS certificate verify failed for %s (%s); check mqtt.tls.ca_file" % (where, detail)
        return "TLS error with %s: %s" % (where, detail)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by %s (is the broker running and listening there?)" % where
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection to %s timed out" % where
    if isinstance(exc, socket.gaierror):
        return "cannot resolve %s (%s)" % (host, exc.strerror or exc)
    return "cannot connect to %s: %s" % (where, exc.strerror or exc)


def encode(payload):
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PublisherStats(object):
    def __init__(self):
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.published = 0  # handed to paho
        self.acknowledged = 0  # on_publish seen (QoS 0: written to the socket)
        self.dropped = 0  # oldest messages dropped because the outbox was full
        self.last_error = ""
        self.disconnected_since = None  # monotonic time, None while connected
        self.last_reconnect_s = None  # length of the last outage
        self.pending = 0  # messages queued or handed to paho and not yet acknowledged
        self.spool_failures = 0  # messages the spool could not store (kept in memory only)


class MqttPublisher(object):
    """Owns the paho client, the outbox and the sender thread."""

    def __init__(self, settings, device_id):
        self.settings = settings
        self.device_id = device_id
        self.stats = PublisherStats()
        self._outbox = create_outbox(settings.queue_size, settings.spool_path)
        self.stats.dropped = self._outbox.dropped_at_start
        self._keys = {}  # paho mid -> outbox key of a handed message
        self._early_acks = set()
        self._ignored_mids = set()  # availability messages sent outside the outbox
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._handing = False  # a thread is between taking a message and paho.publish
        self._overflow_logged = False
        self._error_logged = None  # (text, monotonic time of the next repeat, interval)
        self._connack_refused = False
        self._client = None
        self._thread = None

    def topic(self, kind):
        return "%s/%s/%s" % (self.settings.prefix, self.device_id, kind)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        """Create the client, connect in the background and start the sender thread."""
        import paho.mqtt.client as mqtt

        s = self.settings
        client_id = s.client_id or "digitd-%s" % self.device_id
        client_class = _client_class(mqtt, self._on_connect_error)
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
            client = client_class(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        else:  # paho-mqtt 1.x
            client = client_class(client_id=client_id, clean_session=True)
        client.enable_logger(logging.getLogger("paho"))
        client.max_inflight_messages_set(MAX_HANDED_TO_PAHO)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=s.reconnect_min_s, max_delay=s.reconnect_max_s)
        client.will_set(self.topic("availability"), OFFLINE, qos=1, retain=True)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls.enabled:
            client.tls_set(
                ca_certs=s.tls.ca_file or None,
                certfile=s.tls.cert_file or None,
                keyfile=s.tls.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(s.tls.insecure)
        client.on_connect = _guarded(self._on_connect)
        client.on_disconnect = _guarded(self._on_disconnect)
        client.on_publish = _guarded(self._on_publish)
        self._client = client
        self.stats.disconnected_since = time.monotonic()
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        self._thread = threading.Thread(target=self._send_loop, name="mqtt-sender")
        self._thread.daemon = True
        self._thread.start()
        log.info(
            "MQTT: connecting to %s:%d as %s%s",
            s.host,
            s.port,
            client_id,
            " with TLS" if s.tls.enabled else "",
        )
        return self

    def stop(self, flush_timeout=5.0):
        """Flush what is queued for up to ``flush_timeout`` s, publish ``offline``, disconnect."""
        if self._client is None:
            return
        deadline = time.monotonic() + flush_timeout
        while time.monotonic() < deadline and self.stats.connected and self.pending() > 0:
            time.sleep(0.02)
        left = self.pending()
        if left:
            where = (
                "kept in %s for the next start" % self.settings.spool_path if self._outbox.durable else "lost"
            )
            log.warning("MQTT: %d message(s) not acknowledged at shutdown: %s", left, where)
        if self.stats.connected:
            # Directly, not through the outbox: a spooled 'offline' must never follow the next 'online'.
            info = self._client.publish(self.topic("availability"), OFFLINE, qos=1, retain=True)
            with self._lock:
                self._ignored_mids.add(info.mid)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish offline: %s", exc)
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
        with self._lock:
            self._outbox.close()

    # -- publishing ------------------------------------------------------------------------
    def publish(self, kind, payload, qos=None, retain=False):
        """Queue a message for ``<prefix>/<device_id>/<kind>``; never blocks."""
        self.publish_to(self.topic(kind), payload, qos, retain)

    def publish_to(self, topic, payload, qos=None, retain=False):
        """Queue a message for any topic (Home Assistant's discovery topics); never blocks."""
        body = encode(payload)
        message = Message(topic, body, self.settings.qos if qos is None else qos, retain)
        with self._wake:
            if self._outbox.append(message):
                self.stats.dropped += 1
                if not self._overflow_logged:
                    log.warning(
                        "MQTT: outbox full (%d); dropping the oldest messages until the broker is back",
                        self.settings.queue_size,
                    )
                    self._overflow_logged = True
            self.stats.pending = len(self._outbox)
            self.stats.spool_failures = self._outbox.spool_failures
            taken = self._take_if_idle()
            if taken is None:
                self._wake.notify()
                return
        # Nothing older is waiting and nobody else is handing a message over: hand this one
        # to paho from here, a thread switch sooner (a third of the way to the broker here).
        try:
            self._hand(*taken)
        except Exception:  # noqa: BLE001 - given back to the outbox; the sender retries it
            log.exception("MQTT: handing a message to paho failed; the sender retries it")

    def pending(self):
        """Messages queued or handed to paho and not yet acknowledged."""
        with self._lock:
            return len(self._outbox)

    def _send_loop(self):
        while not self._stop.is_set():
            try:
                self._send_one()
            except Exception:  # noqa: BLE001 - logged; the sender must keep running
                log.exception("MQTT: sending failed")
                self._stop.wait(1.0)

    def _ready_to_hand(self):
        """Whether the oldest pending message may go to paho now (call with the lock held)."""
        return (
            self.stats.connected
            and not self._handing
            and self._outbox.pending_count()
            and self._outbox.handed_count() < MAX_HANDED_TO_PAHO
        )

    def _take_if_idle(self):
        """The message just queued, taken for handing over, when it is the only one pending
        and may go now; else None (call with the lock held)."""
        if self._outbox.pending_count() != 1 or self._stop.is_set() or not self._ready_to_hand():
            return None
        self._handing = True
        return self._outbox.take()

    def _send_one(self):
        """Hand the oldest pending message to paho once connected and below the in-flight cap."""
        with self._wake:
            while not self._stop.is_set() and not self._ready_to_hand():
                self._wake.wait(0.5)
            if self._stop.is_set():
                return
            self._handing = True
            key, message = self._outbox.take()
        if not self._hand(key, message):
            self._stop.wait(0.1)  # not connected after all: retry later

    def _hand(self, key, message):
        """paho.publish one taken message; False when paho refused it (given back). One
        thread at a time hands over (``_handing``), so messages reach paho in queue order."""
        client = self._client
        if client is None:  # stopped meanwhile
            with self._wake:
                self._outbox.give_back(key)
                self._handing = False
            return False
        # Not under our lock: paho calls on_publish with its own lock held.
        try:
            info = client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        except Exception:
            with self._wake:
                self._outbox.give_back(key)
                self._handing = False
                self._wake.notify()
            raise
        with self._wake:
            self._handing = False
            self._wake.notify()
            if info.rc != 0 and message.qos == 0:
                self._outbox.give_back(key)
                return False
            self.stats.published += 1
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._acknowledge(key)
            else:
                self._keys[info.mid] = key
        return True

    def _acknowledge(self, key):
        self._outbox.ack(key)
        self.stats.acknowledged += 1
        self.stats.pending = len(self._outbox)
        self.stats.spool_failures = self._outbox.spool_failures

    # -- connection failures ---------------------------------------------------------------
    def _connect_failed(self, text):
        """Record why an attempt failed; log a reason once, then again after growing intervals."""
        now = time.monotonic()
        with self._lock:
            self.stats.last_error = text
            previous = self._error_logged
            if previous is not None and previous[0] == text and now < previous[1]:
                return
            interval = (
                previous[2] * 2 if previous is not None and previous[0] == text else ERROR_LOG_FIRST_REPEAT_S
            )
            interval = min(interval, ERROR_LOG_MAX_REPEAT_S)
            self._error_logged = (text, now + interval, interval)
        log.error(
            "MQTT: %s; retrying with backoff (next report of this error in %.0f s at most)", text, interval
        )

    def _on_connect_error(self, exc):
        try:
            self._connect_failed(describe_connect_error(exc, self.settings.host, self.settings.port))
        except Exception:  # noqa: BLE001 - called inside paho's network thread
            log.exception("MQTT: could not report a connection error")

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties=None):
        code = getattr(reason, "value", reason)
        if code != 0:
            text = _CONNACK_REASONS.get(code, str(reason))
            self._connack_refused = True
            self._connect_failed(
                "broker %s:%d refused the connection: %s (code %s)"
                % (self.settings.host, self.settings.port, text, code)
            )
            return
        outage = time.monotonic() - (self.stats.disconnected_since or time.monotonic())
        self.stats.connects += 1
        self.stats.last_reconnect_s = outage
        self.stats.disconnected_since = None
        info = client.publish(self.topic("availability"), ONLINE, qos=1, retain=True)
        with self._wake:
            self._ignored_mids.add(info.mid)
            self.stats.connected = True
            self._overflow_logged = False
            self._error_logged = None
            self._wake.notify_all()
        log.info("MQTT: connected to %s:%d (after %.1f s)", self.settings.host, self.settings.port, outage)

    def _on_disconnect(self, client, userdata, *args):
        # paho 1.x: (rc); paho 2.x: (flags, reason_code, properties)
        reason = args[1] if len(args) >= 2 else args[0] if args else 0
        with self._wake:
            was_connected = self.stats.connected
            self.stats.connected = False
            if was_connected:
                self.stats.disconnects += 1
                self.stats.disconnected_since = time.monotonic()
        if was_connected and not self._stop.is_set():
            log.warning("MQTT: disconnected (%s); reconnecting", reason)
        elif not was_connected and not self._stop.is_set():
            if self._connack_refused:  # already reported by _on_connect
                self._connack_refused = False
                return
            code = getattr(reason, "value", reason)
            if code == MQTT_ERR_KEEPALIVE or "keep alive" in str(reason).lower():
                self._connect_failed(
                    "no CONNACK from %s:%d within keepalive_s (%d s): is it an MQTT broker?"
                    % (self.settings.host, self.settings.port, self.settings.keepalive_s)
                )
            else:
                self._connect_failed(
                    "connection to %s:%d closed before CONNACK (%s)"
                    % (self.settings.host, self.settings.port, reason)
                )

    def _on_publish(self, client, userdata, mid, *args):
        with self._wake:
            if mid in self._ignored_mids:
                self._ignored_mids.discard(mid)
            elif mid in self._keys:
                self._acknowledge(self._keys.pop(mid))
            else:
                self._early_acks.add(mid)
            self._wake.notify()


class NullPublisher(object):
    """Used with ``mqtt.enabled: false``: counts and logs at DEBUG."""

    def __init__(self, settings, device_id):
        self.settings = settings
        self.device_id = device_id
        self.stats = PublisherStats()

    def start(self):
        return self

    def stop(self, flush_timeout=5.0):
        pass

    def topic(self, kind):
        return "%s/%s/%s" % (self.settings.prefix, self.device_id, kind)

    def publish(self, kind, payload, qos=None, retain=False):
        self.publish_to(self.topic(kind), payload, qos, retain)

    def publish_to(self, topic, payload, qos=None, retain=False):
        self.stats.published += 1
        log.debug("%s %s", topic, payload)

    def pending(self):
        return 0


def create_publisher(settings, device_id):
    return (MqttPublisher if settings.enabled else NullPublisher)(settings, device_id)
