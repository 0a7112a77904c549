"""The main loop around the reader: threads, queues, batching across frames, stats.

    source -> [reader.prepare] -> batch -> [reader.infer, reader.readings] -> publish

The calling thread captures frames and has the reader cut and preprocess them; an
inference thread takes dynamic batches of frames, has the reader run them through the
backend in one call, and publishes. Per-frame errors are logged and counted, never fatal.

Web and service use only this documented interface: ``open``, ``run``, ``stop``,
``close``, ``wait_stopped``, ``request_reload``, ``apply_config``, ``health``,
``stats_snapshot``, ``latest_view``, ``read_still``, ``describe``, ``describe_source``,
``ended_without_frames``, and ``config`` (read only).
"""

import logging
import threading
import time

from daemon import backends, postprocess, publish, sources
from daemon.batching import DynamicBatcher
from daemon.reader import Reader
from daemon.stats import PipelineStats, stats_payload

log = logging.getLogger(__name__)


class QueuedFrame(object):
    """A frame whose crops are prepared, waiting for inference."""

    __slots__ = ("frame", "image", "crop_count")

    def __init__(self, frame, image):
        self.frame = frame
        self.image = image  # a reader.PreparedImage
        self.crop_count = image.crop_count


class FrameView(object):
    """The newest published frame as the debug view draws it."""

    __slots__ = ("frame", "rois", "prepared", "readings")

    def __init__(self, frame, rois, prepared, readings):
        self.frame = frame
        self.rois = rois
        self.prepared = prepared
        self.readings = readings


class Pipeline(object):
    """Wires the stages from a config. ``run()`` blocks until the input ends or ``stop()``.

    ``source`` and ``publisher`` replace the configured ones (tests, embedding); ``open``
    starts them like its own."""

    def __init__(self, config, source=None, publisher=None):
        self.config = config
        self.stats = PipelineStats()
        self.stop_event = threading.Event()
        self.backend = None
        self.source = source
        self.publisher = publisher
        self.reader = None
        self.ready_since = None
        self.input_ended = False  # the source reached its end (a file), not a stop request
        self._latest_view = None
        self._reload_source = None
        self._infer_lock = threading.Lock()  # the backend is shared with POST /predict
        self._smoother = postprocess.Smoother(config.postprocess.smoothing_frames)
        self._batcher = DynamicBatcher(
            config.batching.max_batch, config.batching.max_wait_ms, config.batching.queue_frames
        )
        self._last_state = None
        self._last_stats = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self):
        """Load the backend, start MQTT, open the source (raises BackendUnavailable/SourceError)."""
        self.backend = backends.load_backend(self.config.backend, self.config.batching.max_batch)
        self.reader = Reader.from_config(self.config, self.backend, self._infer_lock)
        self.publisher = self.publisher or publish.create_publisher(self.config.mqtt, self.config.device_id)
        self.publisher.start()
        self.source = (self.source or sources.create_source(self.config.source)).start()
        self.ready_since = time.monotonic()
        return self

    def describe(self):
        """What is read with what, for logs and systemd's status line."""
        return "reading %s with %s" % (self.source.describe(), self.backend.name)

    def stop(self):
        """Ask the loop to finish (signal-safe: only sets an event)."""
        self.stop_event.set()

    def wait_stopped(self, timeout):
        """Wait up to ``timeout`` s for a stop request; True once one came."""
        return self.stop_event.wait(timeout)

    def request_reload(self, loader):
        """Ask the capture loop to call ``loader()`` for a new config (signal-safe)."""
        self._reload_source = loader

    def apply_config(self, new):
        """Apply what can change live; return (applied keys, keys that need a restart)."""
        from daemon import config as config_module

        live, restart = config_module.live_changes(self.config, new)
        if self.reader is not None:
            self.reader = self.reader.with_settings(new)
        self._smoother = postprocess.Smoother(new.postprocess.smoothing_frames)
        if new.log_level != self.config.log_level:
            logging.getLogger().setLevel(new.log_level)
        # Keep the old values of what needs a restart, so the running config stays truthful.
        merged = new
        for dotted in restart:
            section_path, _, key = dotted.rpartition(".")
            old_section, new_section = self.config, merged
            for part in filter(None, section_path.split(".")):
                old_section, new_section = getattr(old_section, part), getattr(new_section, part)
            setattr(new_section, key, getattr(old_section, key))
        self.config = merged
        return live, restart

    def close(self):
        """Stop MQTT (publishing offline), release backend and source."""
        if self.publisher is not None:
            self.publisher.stop(flush_timeout=5.0)
        if self.backend is not None:
            self.backend.close()
        if self.source is not None:
            self.source.close()

    def ended_without_frames(self):
        """The input ended before a single frame could be read (a file that is not a video)."""
        return self.input_ended and self.source is not None and self.source.stats.frames == 0

    def describe_source(self):
        """The source, for logs (no secrets)."""
        return self.source.describe() if self.source is not None else "no source"

    # -- what web and service read -----------------------------------------------------------
    def stats_snapshot(self):
        """Every counter now, in one dict (see daemon.stats)."""
        return self.stats.snapshot(self.source, self.backend, self._batcher.depth(), self.publisher)

    def latest_view(self):
        """The newest published frame (a FrameView), or None before the first."""
        return self._latest_view

    def preview_reader(self, config):
        """A Reader on this pipeline's backend (and its lock) with ``config``'s ROI, preprocess
        and postprocess settings, for trying settings on a frame; the running ones stay."""
        return self.reader.with_settings(config)

    def read_still(self, image, roi_mode="center"):
        """Read an uploaded image with the current settings, sharing the backend with the camera
        (held only while it runs, so the camera keeps its frame rate)."""
        return self.reader.read_still(image, roi_mode)

    def health(self):
        """(healthy, detail): frames are published and the backend is loaded; ``detail["reason"]``
        says what is wrong, ``detail["alive"]`` whether the loop still works (a source being
        reopened is unhealthy but alive: the systemd watchdog keeps being pinged)."""
        timeout_s = self.config.service.health_timeout_s
        snapshot = self.stats_snapshot()
        last = self.stats.last_output or self.ready_since
        age = None if last is None else time.monotonic() - last
        source_state = snapshot["source_state"]
        backend_loaded = self.backend is not None
        flowing = age is not None and age <= timeout_s
        stopping = self.stop_event.is_set()
        healthy = backend_loaded and flowing and not stopping
        reason = None
        if not backend_loaded:
            reason = "backend not loaded"
        elif stopping:
            reason = "stopping"
        elif not flowing:
            reason = "nothing published for %s s (limit %s s)" % (
                "?" if age is None else "%.1f" % age,
                timeout_s,
            )
            if source_state == "reconnecting":
                reason += "; source %s unavailable, reopening: %s" % (
                    self.source.describe(),
                    self.source.stats.last_error,
                )
        detail = {
            "status": "ok" if healthy else "unhealthy",
            "reason": reason,
            "alive": backend_loaded and not stopping and (flowing or source_state == "reconnecting"),
            "last_output_age_s": None if age is None else round(age, 3),
        }
        for key in (
            "backend",
            "source_state",
            "frames_in",
            "frames_out",
            "dropped_frames",
            "source_reconnects",
            "mqtt_connected",
            "mqtt_last_error",
        ):
            detail[key] = snapshot[key]
        return healthy, detail

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_frames=None):
        """Capture until the input ends, ``max_frames`` frames are read, or ``stop()``."""
        inference = threading.Thread(target=self._inference_loop, name="inference")
        inference.start()
        stats_thread = threading.Thread(target=self._stats_loop, name="stats")
        stats_thread.daemon = True
        stats_thread.start()
        try:
            self._capture_loop(max_frames)
        finally:
            while not self._batcher.put(_EndMarker(), timeout=0.5):
                if not inference.is_alive():
                    break
            inference.join()
            self._publish_stats()
        log.info("stopped after %d frames in, %d out", self.stats.frames_in, self.stats.frames_out)

    def _capture_loop(self, max_frames):
        while not self.stop_event.is_set():
            if self._reload_source is not None:
                loader, self._reload_source = self._reload_source, None
                loader()
            frame = self.source.read(timeout=0.5)
            if frame is None:
                if self.source.finished:
                    self.input_ended = True
                    return
                continue
            try:
                queued = QueuedFrame(frame, self.reader.prepare(frame.image))
            except Exception:  # noqa: BLE001 - a bad frame must never stop the daemon
                self.stats.frame_errors += 1
                log.exception("frame %d: ROI/preprocess failed", frame.index)
                continue
            while not self._batcher.put(queued, timeout=0.5):
                if self.stop_event.is_set():
                    return
            self.stats.frames_in += 1
            if max_frames and self.stats.frames_in >= max_frames:
                return

    def _inference_loop(self):
        while True:
            batch = self._batcher.next_batch(timeout=0.5)
            if not batch:
                continue
            ended = isinstance(batch[-1], _EndMarker)
            queued = [q for q in batch if not isinstance(q, _EndMarker)]
            if queued:
                try:
                    self._infer_and_publish(queued)
                except Exception:  # noqa: BLE001 - counted; this thread must outlive any batch
                    self.stats.inference_errors += 1
                    log.exception(
                        "frames %s: inference or publishing failed", [q.frame.index for q in queued]
                    )
            if ended:
                return

    def _infer_and_publish(self, queued):
        """One backend call for the crops of every frame in the batch, then each frame published."""
        reader = self.reader
        try:
            probabilities = reader.infer([p for q in queued for p in q.image.prepared])
        except Exception:  # noqa: BLE001 - counted; the next batch may succeed
            self.stats.inference_errors += 1
            log.exception("inference failed for frames %s", [q.frame.index for q in queued])
            return
        self.stats.observe_batch(sum(q.crop_count for q in queued))
        start = 0
        for item in queued:
            count = len(item.image.prepared)
            readings = reader.readings(item.image, probabilities[start : start + count])
            start += count
            try:
                self._publish_frame(item, readings)
            except Exception:  # noqa: BLE001 - counted; the next frame may succeed
                self.stats.frame_errors += 1
                log.exception("frame %d: publishing failed", item.frame.index)

    def _publish_frame(self, queued, readings):
        frame = queued.frame
        latency_ms = (time.monotonic() - frame.captured) * 1000.0
        payload = {
            "device_id": self.config.device_id,
            "frame": frame.index,
            "ts": round(frame.timestamp, 3),
            "backend": self.backend.name,
            "latency_ms": round(latency_ms, 2),
        }
        payload.update(Reader.frame_payload(readings))
        self.publisher.publish("prediction", payload)
        self._publish_state_on_change(frame, readings)
        self.stats.observe_output(latency_ms)
        self._latest_view = FrameView(frame, queued.image.rois, queued.image.prepared, readings)

    def _publish_state_on_change(self, frame, readings):
        smoothed = self._smoother.update(readings)
        state_readings = [
            postprocess.RoiReading(r.roi_id, r.box, smoothed[r.roi_id], 0.0, r.line, r.cell) for r in readings
        ]
        state = [(r.roi_id, r.digit) for r in state_readings]
        if state == self._last_state:
            return
        self._last_state = state
        payload = {
            "device_id": self.config.device_id,
            "frame": frame.index,
            "ts": round(frame.timestamp, 3),
            "number": postprocess.compose_number(state_readings),
            "rois": [{"id": r.roi_id, "digit": r.digit} for r in state_readings],
        }
        self.publisher.publish("state", payload, qos=1, retain=True)

    # -- stats -------------------------------------------------------------------------------
    def _stats_loop(self):
        while not self.stop_event.wait(self.config.stats_interval_s):
            try:
                self._publish_stats()
            except Exception:  # noqa: BLE001 - logged; stats must keep coming
                log.exception("publishing stats failed")

    def _publish_stats(self):
        if self.publisher is None or self.source is None:
            return
        snapshot = self.stats_snapshot()
        payload = stats_payload(snapshot, self._last_stats)
        self._last_stats = snapshot
        payload["device_id"] = self.config.device_id
        payload["ts"] = round(time.time(), 3)
        self.publisher.publish("stats", dict(payload), qos=0)


class _EndMarker(object):
    crop_count = 0
