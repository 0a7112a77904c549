"""The pipeline's counters, and the one snapshot of them that the MQTT ``stats`` message,
``/metrics`` and ``/healthz`` all render."""

import bisect
import collections
import time

import numpy as np

# The keys of the MQTT stats payload (besides device_id and ts), in the order published; with
# several cameras, ``sources`` follows them.
STATS_PAYLOAD_KEYS = (
    "fps_in",
    "fps_out",
    "frames_in",
    "frames_out",
    "dropped_frames",
    "frame_errors",
    "inference_errors",
    "latency_p50_ms",
    "latency_p99_ms",
    "mean_batch",
    "backend",
    "queue_depth",
    "source_state",
    "source_reconnects",
    "mqtt_queue",
    "mqtt_dropped",
    "mqtt_connects",
    "mqtt_spool_failures",
    "mqtt_last_error",
    "mqtt_last_outage_s",
    "uptime_s",
)


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
    """What the pipeline counts as it runs (only its own threads write here)."""

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

    def observe_batch(self, crops):
        if crops:
            self.batches += 1
            self.crops += crops
            self.batch_buckets.observe(crops)

    def observe_output(self, latency_ms):
        self.frames_out += 1
        self.latencies_ms.append(latency_ms)
        self.latency_buckets.observe(latency_ms / 1000.0)
        self.last_output = time.monotonic()

    def snapshot(self, cameras, backend, queue_depth, publisher):
        """Every counter now, as one dict; ``cameras`` are the pipeline's (a ``source`` may be
        None before it opens), ``publisher`` and ``backend`` may be None. With several cameras,
        ``sources`` lists each and the source counters are their sums."""
        now = time.monotonic()
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        mqtt = publisher.stats if publisher is not None else None
        states = [c.source.stats.state if c.source is not None else "closed" for c in cameras]
        snapshot = {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped_frames": sum(c.source.stats.dropped for c in cameras if c.source is not None),
            "frame_errors": self.frame_errors,
            "inference_errors": self.inference_errors,
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "mean_batch": round(self.crops / float(self.batches), 2) if self.batches else 0.0,
            "backend": backend.name if backend is not None else None,
            "queue_depth": queue_depth,
            # one state for all: the first that is not "running", so a camera that is away shows
            "source_state": next((state for state in states if state != "running"), "running"),
            "source_reconnects": sum(c.source.stats.reconnects for c in cameras if c.source is not None),
            "mqtt_connected": bool(mqtt is not None and mqtt.connected),
            "mqtt_queue": publisher.pending() if publisher is not None else 0,
            "mqtt_dropped": mqtt.dropped if mqtt is not None else 0,
            "mqtt_connects": mqtt.connects if mqtt is not None else 0,
            "mqtt_spool_failures": mqtt.spool_failures if mqtt is not None else 0,
            "mqtt_last_error": (mqtt.last_error or None) if mqtt is not None else None,
            "mqtt_last_outage_s": None
            if mqtt is None or mqtt.last_reconnect_s is None
            else round(mqtt.last_reconnect_s, 2),
            "last_output_age_s": None if self.last_output is None else round(now - self.last_output, 3),
            "uptime_s": round(now - self.started, 1),
            "latency_buckets": self.latency_buckets.cumulative(),
            "latency_sum_s": self.latency_buckets.total,
            "batch_buckets": self.batch_buckets.cumulative(),
            "batch_sum": self.batch_buckets.total,
            "taken": now,
        }
        if any(camera.id is not None for camera in cameras):
            snapshot["sources"] = [_camera_stats(camera, state) for camera, state in zip(cameras, states)]
        return snapshot


def _camera_stats(camera, state):
    source = camera.source.stats if camera.source is not None else None
    return {
        "id": camera.id,
        "state": state,
        "frames_in": camera.frames_in,
        "frames_out": camera.frames_out,
        "dropped_frames": source.dropped if source is not None else 0,
        "reconnects": source.reconnects if source is not None else 0,
        "last_error": (source.last_error or None) if source is not None else None,
    }


def stats_payload(snapshot, previous):
    """The MQTT ``stats`` payload: the snapshot's published keys, with frame rates since
    ``previous`` (the snapshot the last stats message came from, or None)."""
    then = previous["taken"] if previous else snapshot["taken"] - snapshot["uptime_s"]
    elapsed = max(snapshot["taken"] - then, 1e-6)
    frames_in, frames_out = (previous["frames_in"], previous["frames_out"]) if previous else (0, 0)
    values = dict(snapshot)
    values["fps_in"] = round((snapshot["frames_in"] - frames_in) / elapsed, 2)
    values["fps_out"] = round((snapshot["frames_out"] - frames_out) / elapsed, 2)
    keys = STATS_PAYLOAD_KEYS + (("sources",) if "sources" in snapshot else ())
    return collections.OrderedDict((key, values[key]) for key in keys)
