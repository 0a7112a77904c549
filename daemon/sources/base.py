"""Frame sources: the common machinery (grabber thread, newest-frame slot, reopen backoff)."""

import logging
import threading
import time

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source cannot be opened or read."""


class Frame(object):
    """One captured image. ``index`` counts every frame taken from the source, dropped ones too."""

    __slots__ = ("index", "image", "timestamp", "captured")

    def __init__(self, index, image):
        self.index = index
        self.image = image
        self.timestamp = time.time()
        self.captured = time.monotonic()


class Backoff(object):
    """Exponential delay: initial, 2x, 4x ... up to maximum; ``reset`` after a success."""

    def __init__(self, initial, maximum):
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def next_delay(self):
        delay = self.current
        self.current = min(self.current * 2.0, self.maximum)
        return delay

    def reset(self):
        self.current = self.initial


class SourceStats(object):
    """Counters shown in stats, /healthz and logs."""

    def __init__(self):
        self.frames = 0  # frames taken from the device or file
        self.dropped = 0  # frames overwritten before the pipeline took them
        self.reconnects = 0  # reopen attempts after a failure
        self.failures = 0  # failed reads / opens
        self.state = "starting"  # starting, running, reconnecting, finished, closed
        self.last_error = ""


class FrameSource(object):
    """Base class. Subclasses implement ``_open``, ``_read_image`` and ``_release``.

    Non-live sources (a video file, an image folder) deliver every frame in order from
    ``read``. Live sources (cameras, streams, a file paced in real time) run a grabber
    thread that keeps only the newest frame and counts the ones nobody took.
    """

    live = False

    def __init__(self, settings):
        self.settings = settings
        self.stats = SourceStats()
        self._backoff = Backoff(settings.reopen_initial_delay_s, settings.reopen_max_delay_s)
        self._stop = threading.Event()
        self._condition = threading.Condition()
        self._newest = None
        self._thread = None
        self._generation = 0
        self._last_delivery = time.monotonic()
        self._next_index = 0
        self._frames_at_open = 0  # stats.frames when the source was last (re)opened
        self._next_attempt = None  # monotonic time of the next reopen attempt

    # -- to implement -------------------------------------------------------------------
    def describe(self):
        """Human-readable description for logs (no secrets)."""
        raise NotImplementedError

    def _open(self):
        """Open the device/file; raise SourceError with the reason."""
        raise NotImplementedError

    def _read_image(self):
        """Return the next image, None at the end of a file; raise SourceError on failure."""
        raise NotImplementedError

    def _release(self):
        raise NotImplementedError

    def _abandon(self):
        """Forget a device handle whose read is blocked in another thread (do not release it)."""

    def _pace(self):
        """Live file sources sleep here to keep real time; cameras block in read."""

    # -- public -----------------------------------------------------------------------------
    def start(self):
        """Open the source. Raises SourceError unless ``wait_for_source`` is set."""
        try:
            self._open()
        except SourceError as exc:
            if not self.settings.wait_for_source:
                raise
            self._note_failure(exc)
            log.warning("%s: unavailable at start (%s); waiting for it", self.describe(), exc)
            self.stats.state = "reconnecting"
            if not self.live:
                self._reopen_blocking()
        else:
            self.stats.state = "running"
            log.info("opened %s", self.describe())
        if self.live:
            self._start_grabber()
        return self

    def read(self, timeout=1.0):
        """Return the next Frame, or None when nothing arrived in ``timeout`` or the source ended."""
        if self.live:
            return self._take_newest(timeout)
        return self._read_direct(timeout)

    @property
    def finished(self):
        return self.stats.state == "finished"

    def close(self):
        """Stop the grabber and release the device."""
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        try:
            self._release()
        except Exception as exc:  # noqa: BLE001 - release must not mask the shutdown
            log.warning("%s: release failed: %s", self.describe(), exc)
        self.stats.state = "closed"

    # -- non-live ----------------------------------------------------------------------------
    def _read_direct(self, timeout):
        while not self._stop.is_set():
            if self.stats.state == "finished":
                return None
            if self.stats.state == "reconnecting":
                # Return within the timeout so the caller can see its own stop request.
                self._reopen_blocking(timeout)
                if self.stats.state == "reconnecting":
                    return None
                continue
            try:
                image = self._read_image()
            except SourceError as exc:
                self._note_failure(exc)
                log.warning("%s: %s; reopening", self.describe(), exc)
                self.stats.state = "reconnecting"
                continue
            if image is None:
                if self._may_loop():
                    self._restart_file()
                    continue
                self.stats.state = "finished"
                log.info("%s: end of input after %d frames", self.describe(), self.stats.frames)
                return None
            return self._make_frame(image)
        return None

    def _may_loop(self):
        """Loop only a file that gave frames since it was opened (else it would spin on nothing)."""
        return self.settings.loop and self.stats.frames > self._frames_at_open

    def _restart_file(self):
        self._frames_at_open = self.stats.frames
        self._release()
        try:
            self._open()
        except SourceError as exc:
            self._note_failure(exc)
            self.stats.state = "reconnecting"
        else:
            self._last_delivery = time.monotonic()

    def _reopen_blocking(self, timeout=None):
        """One reopen attempt once the backoff delay has passed; waits at most ``timeout`` s."""
        now = time.monotonic()
        if self._next_attempt is None:
            self._next_attempt = now + self._backoff.next_delay()
        wait = self._next_attempt - now
        if timeout is not None and wait > timeout:
            self._stop.wait(timeout)
            return
        if wait > 0 and self._stop.wait(wait):
            return
        self._next_attempt = None
        self.stats.reconnects += 1
        self._frames_at_open = self.stats.frames
        try:
            self._release()
            self._open()
        except SourceError as exc:
            self._note_failure(exc)
            log.warning(
                "%s: reopen failed (%s); next try in %.1f s", self.describe(), exc, self._backoff.current
            )
            return
        self._backoff.reset()
        self._last_delivery = time.monotonic()  # the fresh handle gets a full stall_timeout_s
        self.stats.state = "running"
        log.info("%s: reopened", self.describe())

    def _make_frame(self, image):
        self._next_index += 1
        self.stats.frames += 1
        return Frame(self._next_index, image)

    def _note_failure(self, exc):
        self.stats.failures += 1
        self.stats.last_error = str(exc)

    # -- live --------------------------------------------------------------------------------
    def _start_grabber(self):
        self._generation += 1
        self._last_delivery = time.monotonic()
        self._thread = threading.Thread(
            target=self._grab_loop, args=(self._generation,), name="grabber-%d" % self._generation
        )
        self._thread.daemon = True
        self._thread.start()

    def _grab_loop(self, generation):
        while not self._stop.is_set() and generation == self._generation:
            if self.stats.state == "reconnecting":
                self._reopen_blocking()
                continue
            try:
                image = self._read_image()
                if image is None and self._may_loop():
                    self._restart_file()
                    continue
            except SourceError as exc:
                self._note_failure(exc)
                log.warning("%s: %s; reopening", self.describe(), exc)
                self.stats.state = "reconnecting"
                continue
            if generation != self._generation:
                break  # a stalled read came back after we replaced this grabber
            if image is None:
                self.stats.state = "finished"
                with self._condition:
                    self._condition.notify_all()
                return
            frame = self._make_frame(image)
            with self._condition:
                if self._newest is not None:
                    self.stats.dropped += 1
                self._newest = frame
                self._last_delivery = time.monotonic()
                self._condition.notify()
            self._pace()

    def _take_newest(self, timeout):
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._newest is None and not self._stop.is_set() and not self.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            frame, self._newest = self._newest, None
        if frame is None:
            self._check_stall()
        return frame

    def _check_stall(self):
        silent = time.monotonic() - self._last_delivery
        if self.stats.state == "running" and silent > self.settings.stall_timeout_s:
            # A blocked read cannot be interrupted: abandon that thread, reopen in a new one.
            log.warning("%s: no frame for %.1f s; reopening", self.describe(), silent)
            self._note_failure(SourceError("stalled for %.1f s" % silent))
            self.stats.state = "reconnecting"
            self._abandon()
            self._start_grabber()
