"""The main loop: the only module that knows the order of the stages.

    source -> roi -> preprocess -> batch -> backend -> postprocess -> publish

The calling thread captures frames, cuts ROIs and preprocesses them; an
inference thread takes dynamic batches, runs the backend, turns probabilities
into readings and publishes. Per-frame errors are logged and counted, never fatal.
"""

import bisect
import collections
import logging
import threading
import time

import numpy as np

from daemon import backends, postprocess, preprocess, publish, roi, sources
from daemon.batching import DynamicBatcher

log = logging.getLogger(__name__)


def infer_prepared(backend, prepared):
    """The non-empty prepared crops through the backend in one call; per crop, its probability
    vector, or None for an empty crop (which never reaches the model)."""
    tensors = [p.tensor for p in prepared if not p.empty]
    if not tensors:
        return [None] * len(prepared)
    rows = iter(backend.infer_all(np.stack(tensors)))
    return [None if p.empty else next(rows) for p in prepared]


def crop_confidences(backend, params, crops, lock=None):
    """preprocess -> backend for loose crops: the top probability of each (0 for an empty crop).
    Lets the segment ROI mode ask the classifier whether a wide blob is one digit or two."""
    prepared = [preprocess.prepare(crop, params) for crop in crops]
    if lock is None:
        probabilities = infer_prepared(backend, prepared)
    else:
        with lock:
            probabilities = infer_prepared(backend, prepared)
    return [0.0 if p is None else postprocess.digit_confidence(p) for p in probabilities]


class FrameWork(object):
    """One frame on its way through the stages."""

    __slots__ = ("frame", "rois", "prepared", "crop_count")

    def __init__(self, frame, rois, prepared):
        self.frame = frame
        self.rois = rois
        self.prepared = prepared
        self.crop_count = sum(1 for p in prepared if not p.empty)


class Buckets(object):
    """Cumulative-histogram counts for /metrics without a metrics library in the hot path."""

    def __init__(self, bounds):
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self):
        """[(upper bound as str, cumulative count)] ending with +Inf."""
        out, running = [], 0
        for bound, count in zip(self.bounds + [float("inf")], self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class PipelineStats(object):
    """Counters and recent latencies; ``snapshot`` makes the stats payload."""

    def __init__(self):
        self.started = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.frame_errors = 0
        self.inference_errors = 0
        self.batches = 0
        self.crops = 0
        self.last_output = None  # monotonic time of the last published prediction
        self.latencies_ms = collections.deque(maxlen=2048)
        self.latency_buckets = Buckets([0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0])
        self.batch_buckets = Buckets([1, 2, 4, 8, 16, 32, 64, 128])
        self._last_snapshot = (time.monotonic(), 0, 0)

    def snapshot(self, source_stats, backend_name, queue_depth, publisher_stats):
        now = time.monotonic()
        then, frames_in, frames_out = self._last_snapshot
        elapsed = max(now - then, 1e-6)
        self._last_snapshot = (now, self.frames_in, self.frames_out)
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "fps_in": round((self.frames_in - frames_in) / elapsed, 2),
            "fps_out": round((self.frames_out - frames_out) / elapsed, 2),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped_frames": source_stats.dropped,
            "frame_errors": self.frame_errors,
            "inference_errors": self.inference_errors,
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "mean_batch": round(self.crops / float(self.batches), 2) if self.batches else 0.0,
            "backend": backend_name,
            "queue_depth": queue_depth,
            "source_state": source_stats.state,
            "source_reconnects": source_stats.reconnects,
            "mqtt_queue": publisher_stats.pending,
            "mqtt_dropped": publisher_stats.dropped,
            "mqtt_connects": publisher_stats.connects,
            "mqtt_spool_failures": publisher_stats.spool_failures,
            "mqtt_last_error": publisher_stats.last_error or None,
            "mqtt_last_outage_s": None
            if publisher_stats.last_reconnect_s is None
            else round(publisher_stats.last_reconnect_s, 2),
            "uptime_s": round(now - self.started, 1),
        }


class Pipeline(object):
    """Wires the stages from a config. ``run()`` blocks until the input ends or ``stop()``."""

    def __init__(self, config):
        self.config = config
        self.stats = PipelineStats()
        self.stop_event = threading.Event()
        self.backend = None
        self.source = None
        self.publisher = None
        self.last_view = None  # (frame, rois, prepared, readings) of the newest published frame
        self.infer_lock = threading.Lock()  # the backend is shared with POST /predict
        self.ready_since = None
        self.input_ended = False  # the source reached its end (a file), not a stop request
        self._reload_source = None
        self._apply_stage_settings(config)
        self.batcher = DynamicBatcher(
            config.batching.max_batch, config.batching.max_wait_ms, config.batching.queue_frames
        )
        self._last_state = None

    def _apply_stage_settings(self, config):
        self.roi_extractor = roi.create_extractor(config.roi)
        if hasattr(self.roi_extractor, "classifier"):
            self.roi_extractor.classifier = self._crop_confidences
        self.preprocess_params = preprocess.PreprocessParams.from_config(config.preprocess.as_dict())
        self.min_confidence = config.postprocess.min_confidence
        self.smoother = postprocess.Smoother(config.postprocess.smoothing_frames)

    def _crop_confidences(self, crops):
        return crop_confidences(self.backend, self.preprocess_params, crops, self.infer_lock)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self):
        """Load the backend, start MQTT, open the source (raises BackendUnavailable/SourceError)."""
        self.backend = backends.load_backend(self.config.backend, self.config.batching.max_batch)
        self.publisher = publish.create_publisher(self.config.mqtt, self.config.device_id).start()
        self.source = sources.create_source(self.config.source).start()
        self.ready_since = time.monotonic()
        return self

    def stop(self):
        """Ask the loop to finish (signal-safe: only sets an event)."""
        self.stop_event.set()

    def request_reload(self, loader):
        """Ask the capture loop to call ``loader()`` for a new config (signal-safe)."""
        self._reload_source = loader

    def apply_config(self, new):
        """Apply what can change live; return (applied keys, keys that need a restart)."""
        from daemon import config as config_module

        live, restart = config_module.live_changes(self.config, new)
        self._apply_stage_settings(new)
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

    def health(self, timeout_s):
        """(healthy, detail): frames are published and the backend is loaded; ``detail["reason"]``
        says what is wrong, ``detail["alive"]`` whether the loop still works (a source being
        reopened is unhealthy but alive: the systemd watchdog keeps being pinged)."""
        now = time.monotonic()
        last = self.stats.last_output or self.ready_since
        age = None if last is None else now - last
        source = self.source
        source_state = source.stats.state if source is not None else "closed"
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
                    source.describe(),
                    source.stats.last_error,
                )
        detail = {
            "status": "ok" if healthy else "unhealthy",
            "reason": reason,
            "alive": backend_loaded and not stopping and (flowing or source_state == "reconnecting"),
            "backend": self.backend.name if backend_loaded else None,
            "source_state": source_state,
            "last_output_age_s": None if age is None else round(age, 3),
            "frames_in": self.stats.frames_in,
            "frames_out": self.stats.frames_out,
            "dropped_frames": source.stats.dropped if source is not None else 0,
            "source_reconnects": source.stats.reconnects if source is not None else 0,
            "mqtt_connected": bool(self.publisher is not None and self.publisher.stats.connected),
            "mqtt_last_error": (self.publisher.stats.last_error or None)
            if self.publisher is not None
            else None,
        }
        return healthy, detail

    def close(self):
        """Stop MQTT (publishing offline), release backend and source."""
        if self.publisher is not None:
            self.publisher.stop(flush_timeout=5.0)
        if self.backend is not None:
            self.backend.close()
        if self.source is not None:
            self.source.close()

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
            while not self.batcher.put(_EndMarker(), timeout=0.5):
                if not inference.is_alive():
                    break
            inference.join()
            self._publish_stats()
        log.info("stopped after %d frames in, %d out", self.stats.frames_in, self.stats.frames_out)

    # -- capture side (caller's thread) ----------------------------------------------------
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
                work = self._prepare(frame)
            except Exception:  # noqa: BLE001 - a bad frame must never stop the daemon
                self.stats.frame_errors += 1
                log.exception("frame %d: ROI/preprocess failed", frame.index)
                continue
            while not self.batcher.put(work, timeout=0.5):
                if self.stop_event.is_set():
                    return
            self.stats.frames_in += 1
            if max_frames and self.stats.frames_in >= max_frames:
                return

    def _prepare(self, frame):
        rois = self.roi_extractor.extract(frame.image)
        # a box clipped away by the frame edge (the ROI stage warns once) prepares as empty
        prepared = [preprocess.prepare(r.crop, self.preprocess_params) for r in rois]
        return FrameWork(frame, rois, prepared)

    # -- inference side ----------------------------------------------------------------------
    def _inference_loop(self):
        while True:
            batch = self.batcher.next_batch(timeout=0.5)
            if not batch:
                continue
            ended = isinstance(batch[-1], _EndMarker)
            works = [w for w in batch if not isinstance(w, _EndMarker)]
            if works:
                try:
                    self._infer_and_publish(works)
                except Exception:  # noqa: BLE001 - counted; this thread must outlive any batch
                    self.stats.inference_errors += 1
                    log.exception("frames %s: inference or publishing failed", [w.frame.index for w in works])
            if ended:
                return

    def _infer_and_publish(self, works):
        prepared = [p for work in works for p in work.prepared]
        crops = sum(work.crop_count for work in works)
        try:
            with self.infer_lock:
                probabilities = iter(infer_prepared(self.backend, prepared))
        except Exception:  # noqa: BLE001 - counted; the next batch may succeed
            self.stats.inference_errors += 1
            log.exception("inference failed for frames %s", [w.frame.index for w in works])
            return
        if crops:
            self.stats.batches += 1
            self.stats.crops += crops
            self.stats.batch_buckets.observe(crops)
        for work in works:
            readings = [
                postprocess.reading_for(r, next(probabilities), self.min_confidence) for r in work.rois
            ]
            try:
                self._publish_frame(work, readings)
            except Exception:  # noqa: BLE001 - counted; the next frame may succeed
                self.stats.frame_errors += 1
                log.exception("frame %d: publishing failed", work.frame.index)

    def _publish_frame(self, work, readings):
        frame = work.frame
        latency_ms = (time.monotonic() - frame.captured) * 1000.0
        payload = {
            "device_id": self.config.device_id,
            "frame": frame.index,
            "ts": round(frame.timestamp, 3),
            "backend": self.backend.name,
            "latency_ms": round(latency_ms, 2),
            "rois": [r.as_payload() for r in readings],
            "number": postprocess.compose_number(readings),
        }
        grid = postprocess.compose_grid(readings)
        if grid is not None:
            payload["grid"] = grid
        self.publisher.publish("prediction", payload)
        smoothed = self.smoother.update(readings)
        state_readings = [
            postprocess.RoiReading(r.roi_id, r.box, smoothed[r.roi_id], 0.0, r.line, r.cell) for r in readings
        ]
        state = [(r.roi_id, r.digit) for r in state_readings]
        if state != self._last_state:
            self._last_state = state
            self.publisher.publish(
                "state",
                {
                    "device_id": self.config.device_id,
                    "frame": frame.index,
                    "ts": round(frame.timestamp, 3),
                    "number": postprocess.compose_number(state_readings),
                    "rois": [{"id": r.roi_id, "digit": r.digit} for r in state_readings],
                },
                qos=1,
                retain=True,
            )
        self.stats.frames_out += 1
        self.stats.latencies_ms.append(latency_ms)
        self.stats.latency_buckets.observe(latency_ms / 1000.0)
        self.stats.last_output = time.monotonic()
        self.last_view = (frame, work.rois, work.prepared, readings)

    # -- stats -----------------------------------------------------------------------------
    def _stats_loop(self):
        while not self.stop_event.wait(self.config.stats_interval_s):
            try:
                self._publish_stats()
            except Exception:  # noqa: BLE001 - logged; stats must keep coming
                log.exception("publishing stats failed")

    def _publish_stats(self):
        if self.publisher is None or self.source is None:
            return
        payload = self.stats.snapshot(
            self.source.stats,
            self.backend.name,
            self.batcher.depth(),
            self.publisher.stats,
        )
        payload["device_id"] = self.config.device_id
        payload["ts"] = round(time.time(), 3)
        self.publisher.publish("stats", payload, qos=0)


class _EndMarker(object):
    crop_count = 0
