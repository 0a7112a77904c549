"""A utility meter's reading: the boxes in order make one number, checked like a meter.

With ``roi.meter.enabled`` the ROI boxes (``roi.mode: boxes``, most significant digit
first) are a meter's drums or digits. Each frame:

1. Drums caught between two digits (the model's "digit in transition") are resolved as a
   counter would: the last drum still shows the digit it is leaving; any other drum has
   rolled on exactly when the drum below it has wrapped past 9 since the last good value.
   Without a last good value a drum in transition leaves the reading unread.
2. The digits make a number, with ``decimals`` of them after the decimal point.
3. The number is checked against the last good value: it may not fall (unless
   ``allow_decrease``; status "negative rate") and may not rise faster than ``max_rate``
   units per hour, plus one step of the last digit, which can tick over at any moment
   (status "rate too high"). A rejected reading keeps the last good value.
4. The last good value is written to ``state_file`` (atomically) and read back at start, so
   the checks hold across restarts.

The result is a dict published in each prediction (``meter``) and, retained, on the
camera's ``meter`` topic whenever value or status changes.
"""

import json
import logging
import os

log = logging.getLogger(__name__)

OK = "ok"
NEGATIVE_RATE = "negative rate"
RATE_TOO_HIGH = "rate too high"
IN_TRANSITION = "digit in transition"
UNREAD = "unread digit"
NOT_ALIGNED = "not aligned"
STATUSES = (OK, NEGATIVE_RATE, RATE_TOO_HIGH, IN_TRANSITION, UNREAD, NOT_ALIGNED)
DEFAULT_STATE_DIRECTORY = "/var/lib/digitd"  # systemd's StateDirectory=digitd


def default_state_file(source_id=None):
    """``$STATE_DIRECTORY/meter.json`` (``meter-<source>.json`` with several cameras); systemd
    sets STATE_DIRECTORY from the unit's StateDirectory=digitd."""
    folder = os.environ.get("STATE_DIRECTORY", DEFAULT_STATE_DIRECTORY).split(":")[0]
    return os.path.join(folder, "meter.json" if source_id is None else "meter-%s.json" % source_id)


def resolve_transitions(readings, previous_digits):
    """Digits (most significant first) of one frame's readings, drums in transition resolved
    from ``previous_digits`` (the last good reading's digit string, or None); returns
    (list of ints, None) or (None, status) when a digit cannot be known."""
    digits = [r.digit for r in readings]
    if previous_digits is not None and len(previous_digits) != len(digits):
        previous_digits = None
    for index in range(len(digits) - 1, -1, -1):
        if digits[index] is not None:
            continue
        if not readings[index].transition:
            return None, UNREAD
        if previous_digits is None:
            return None, IN_TRANSITION
        left = int(previous_digits[index])
        if index == len(digits) - 1:
            digits[index] = left  # the last drum still shows the digit it is leaving
        else:
            wrapped = digits[index + 1] < int(previous_digits[index + 1])
            digits[index] = (left + 1) % 10 if wrapped else left
    return digits, None


class Meter(object):
    """One meter's last good value and the checks of each new reading against it."""

    def __init__(self, settings, source_id=None):
        self.decimals = settings.decimals
        self.allow_decrease = settings.allow_decrease
        self.max_rate = settings.max_rate
        self.path = settings.state_file or default_state_file(source_id)
        self.settings_key = _settings_key(settings)
        self.value = None  # the last good value
        self.digits = None  # its digits, as read
        self.ts = None  # when it was read
        self._save_failed = False
        self._load()

    def update(self, readings, ts, aligned=True):
        """Check one frame's readings (the boxes in order); return the ``meter`` payload.
        A frame not aligned to the reference (``roi.align``) is not read."""
        if not aligned or not readings:
            return {"value": self.value, "reading": None, "status": NOT_ALIGNED if not aligned else UNREAD}
        digits, status = resolve_transitions(readings, self.digits)
        reading = None
        if digits is not None:
            text = "".join(str(d) for d in digits)
            value = self._value_of(text)
            reading = value
            status = self._check(value, ts)
            if status == OK:
                if value != self.value or text != self.digits:
                    self.value, self.digits, self.ts = value, text, ts
                    self._save()
                else:
                    self.ts = ts
        return {"value": self.value, "reading": reading, "status": status}

    def _value_of(self, text):
        return round(int(text) / float(10**self.decimals), self.decimals) if self.decimals else int(text)

    def _check(self, value, ts):
        if self.value is None:
            return OK
        if value < self.value:
            return OK if self.allow_decrease else NEGATIVE_RATE
        if self.max_rate > 0 and self.ts is not None:
            hours = max(0.0, ts - self.ts) / 3600.0
            step = 10.0**-self.decimals
            if value - self.value > self.max_rate * hours + step + 1e-9:
                return RATE_TOO_HIGH
        return OK

    def _load(self):
        try:
            with open(self.path) as handle:
                state = json.load(handle)
            value, digits, ts = state["value"], state["digits"], float(state["ts"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("meter state %s unreadable, starting without a previous value: %s", self.path, exc)
            return
        if not (isinstance(digits, str) and digits.isdigit() and isinstance(value, (int, float))):
            log.warning("meter state %s holds no reading, starting without a previous value", self.path)
            return
        self.value, self.digits, self.ts = value, digits, ts
        log.info("meter: previous value %s from %s", value, self.path)

    def _save(self):
        tmp = self.path + ".tmp"
        try:
            folder = os.path.dirname(self.path)
            if folder and not os.path.isdir(folder):
                os.makedirs(folder)
            with open(tmp, "w") as handle:
                json.dump({"value": self.value, "digits": self.digits, "ts": self.ts}, handle)
            os.replace(tmp, self.path)
            self._save_failed = False
        except OSError as exc:
            if not self._save_failed:
                log.warning("meter state %s not saved (the value survives no restart): %s", self.path, exc)
            self._save_failed = True


def for_camera(previous, roi_settings, source_id=None):
    """The Meter of a camera whose ROI settings are ``roi_settings``: None without a meter,
    ``previous`` when its settings are unchanged (a reload keeps the value in memory)."""
    settings = roi_settings.meter
    if not settings.enabled:
        return None
    if previous is not None and previous.settings_key == _settings_key(settings):
        return previous
    return Meter(settings, source_id)


def _settings_key(settings):
    return tuple(sorted(settings.as_dict().items()))


def state_payload(device_id, ts, meter_payload, source_id=None):
    """The retained ``meter`` topic's message."""
    payload = {"device_id": device_id, "ts": round(ts, 3)}
    if source_id is not None:
        payload["source"] = source_id
    payload.update(meter_payload)
    return payload
