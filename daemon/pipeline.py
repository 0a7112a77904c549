"""The main loop around the reader: threads, queues, batching across frames, stats.

    sources -> [reader.prepare] -> batch -> [reader.infer, reader.readings] -> publish

One capture thread per camera takes frames and has that camera's reader cut and
preprocess them; one inference thread takes dynamic batches of frames from every camera,
runs them through the one backend in one call, and publishes each frame's readings for
its camera. Per-frame errors are logged and counted, never fatal; a camera that fails is
reopened by its source while the others go on.

Web and service use only this documented interface: ``open``, ``run``, ``stop``,
``close``, ``wait_stopped``, ``request_reload``, ``apply_config``, ``health``,
``stats_snapshot``, ``latest_view``, ``source_ids``, ``read_still``, ``describe``,
``describe_source``, ``ended_without_frames``, and ``config`` (read only).
"""

import logging
import threading
import time

import cv2

from daemon import backends, homeassistant, meter, postprocess, publish, sources
from daemon import config as config_module
from daemon.batching import DynamicBatcher
from daemon.reader import Reader
from daemon.stats import PipelineStats, stats_payload

log = logging.getLogger(__name__)


class Camera(object):
    """One source and what belongs to it: its reader (its ROIs), smoothing, state, newest view."""

    def __init__(self, source_id, settings, roi_settings, source=None):
        self.id = source_id  # None with the single source/roi form: topics and payloads without it
        self.settings = settings
        self.roi_settings = roi_settings
        self.source = source
        self.reader = None
        self.smoother = None
        self.last_state = None
        self.meter = None  # a daemon.meter.Meter when roi.meter is enabled
        self.last_meter = None
        self.latest_view = None
        self.frames_in = 0
        self.frames_out = 0
        self.last_output = None
        self.ended = False  # the source reached its end (a file)

    def topic(self, kind):
        return kind if self.id is None else "%s/%s" % (self.id, kind)

    def describe(self):
        text = self.source.describe() if self.source is not None else "a closed source"
        return text if self.id is None else "%s (%s)" % (self.id, text)


class QueuedFrame(object):
    """A frame whose crops are prepared, waiting for inference."""

    __slots__ = ("camera", "frame", "image", "crop_count")

    def __init__(self, camera, frame, image):
        self.camera = camera
        self.frame = frame
        self.image = image  # a reader.PreparedImage
        self.crop_count = image.crop_count


class FrameView(object):
    """The newest published frame of a camera, as the debug view draws it: ``frame`` as the
    camera gave it, ``roi_image`` the picture its ROIs are in (the frame registered to the
    reference when ``roi.align`` is on, else the frame's own image)."""

    __slots__ = ("frame", "rois", "prepared", "readings", "roi_image")

    def __init__(self, frame, rois, prepared, readings, roi_image=None):
        self.frame = frame
        self.rois = rois
        self.prepared = prepared
        self.readings = readings
        self.roi_image = frame.image if roi_image is None else roi_image


class Pipeline(object):
    """Wires the stages from a config. ``run()`` blocks until every input ends or ``stop()``.

    ``source`` (one FrameSource, or {source id: FrameSource} with ``sources:``) and
    ``publisher`` replace the configured ones (tests, embedding); ``open`` starts them."""

    def __init__(self, config, source=None, publisher=None):
        self.config = config
        self.stats = PipelineStats()
        self.stop_event = threading.Event()
        self.backend = None
        self.publisher = publisher
        self.reader = None  # the first camera's: reads uploads
        given = source if isinstance(source, dict) else {None: source}
        self.cameras = [
            Camera(source_id, settings, roi, given.get(source_id if isinstance(source, dict) else None))
            for source_id, settings, roi in config_module.inputs(config)
        ]
        self.ready_since = None
        self._reload_source = None
        self._infer_lock = threading.Lock()  # the backend is shared with POST /predict
        self._batcher = DynamicBatcher(
            config.batching.max_batch, config.batching.max_wait_ms, config.batching.queue_frames
        )
        self._last_stats = None

    @property
    def source(self):
        """The first camera's source (the only one without ``sources:``)."""
        return self.cameras[0].source

    @property
    def input_ended(self):
        """Every source reached its end (files), not a stop request."""
        return all(camera.ended for camera in self.cameras)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self):
        """Load the backend, start MQTT, open the sources (raises BackendUnavailable/SourceError)."""
        if self.config.service.opencv_threads:
            cv2.setNumThreads(self.config.service.opencv_threads)
        self.backend = backends.load_backend(self.config.backend, self.config.batching.max_batch)
        self._apply_reading_settings(self.config)
        self.publisher = self.publisher or publish.create_publisher(self.config.mqtt, self.config.device_id)
        self.publisher.start()
        homeassistant.announce(self.publisher, self.config)  # mqtt.homeassistant: discovery, retained
        for camera in self.cameras:
            camera.source = (camera.source or sources.create_source(camera.settings)).start()
        self.ready_since = time.monotonic()
        return self

    def _apply_reading_settings(self, config):
        by_id = dict((source_id, roi) for source_id, _, roi in config_module.inputs(config))
        for camera in self.cameras:
            camera.roi_settings = by_id.get(camera.id, camera.roi_settings)
            camera.reader = Reader.from_config(config, self.backend, self._infer_lock, camera.roi_settings)
            camera.smoother = postprocess.Smoother(config.postprocess.smoothing_frames)
            camera.meter = meter.for_camera(camera.meter, camera.roi_settings, camera.id)
        self.reader = self.cameras[0].reader

    def describe(self):
        """What is read with what, for logs and systemd's status line."""
        return "reading %s with %s" % (self.describe_source(), self.backend.name)

    def describe_source(self):
        """The sources, for logs (no secrets)."""
        return ", ".join(camera.describe() for camera in self.cameras)

    def stop(self):
        """Ask the loop to finish (signal-safe: only sets an event)."""
        self.stop_event.set()

    def wait_stopped(self, timeout):
        """Wait up to ``timeout`` s for a stop request; True once one came."""
        return self.stop_event.wait(timeout)

    def request_reload(self, loader):
        """Ask the loop to call ``loader()`` for a new config (signal-safe)."""
        self._reload_source = loader

    def apply_config(self, new):
        """Apply what can change live; return (applied keys, keys that need a restart)."""
        live, restart = config_module.live_changes(self.config, new)
        if self.backend is not None:
            self._apply_reading_settings(new)
        if new.log_level != self.config.log_level:
            logging.getLogger().setLevel(new.log_level)
        # Keep the old values of what needs a restart, so the running config stays truthful.
        merged = new
        for dotted in restart:
            section_path, _, key = dotted.rpartition(".")
            old_section = config_module.section_at(self.config, section_path)
            setattr(config_module.section_at(merged, section_path), key, getattr(old_section, key))
        self.config = merged
        return live, restart

    def close(self):
        """Stop MQTT (publishing offline), release backend and sources."""
        if self.publisher is not None:
            self.publisher.stop(flush_timeout=5.0)
        if self.backend is not None:
            self.backend.close()
        for camera in self.cameras:
            if camera.source is not None:
                camera.source.close()

    def ended_without_frames(self):
        """A source ended before a single frame could be read (a file that is not a video)."""
        return any(c.ended and c.source is not None and c.source.stats.frames == 0 for c in self.cameras)

    # -- what web and service read -----------------------------------------------------------
    def stats_snapshot(self):
        """Every counter now, in one dict (see daemon.stats)."""
        return self.stats.snapshot(self.cameras, self.backend, self._batcher.depth(), self.publisher)

    def latest_view(self, source_id=None):
        """The newest published frame (a FrameView) of a camera (default the first), or None
        before its first; KeyError for an unknown source id."""
        return self._camera(source_id).latest_view

    def source_ids(self):
        """The cameras' ids ([None] with the single source/roi form)."""
        return [camera.id for camera in self.cameras]

    def _camera(self, source_id):
        if source_id is None:
            return self.cameras[0]
        for camera in self.cameras:
            if camera.id == source_id:
                return camera
        raise KeyError(
            "no source %r (sources: %s)" % (source_id, ", ".join(str(i) for i in self.source_ids()))
        )

    def preview_reader(self, config):
        """A Reader on this pipeline's backend (and its lock) with ``config``'s ROI, preprocess
        and postprocess settings, for trying settings on a frame; the running ones stay."""
        return self.reader.with_settings(config)

    def read_still(self, image, roi_mode="center"):
        """Read an uploaded image with the current settings, sharing the backend with the camera
        (held only while it runs, so the camera keeps its frame rate)."""
        return self.reader.read_still(image, roi_mode)

    def health(self):
        """(healthy, detail): every camera's frames are published and the backend is loaded;
        ``detail["reason"]`` says what is wrong, ``detail["alive"]`` whether the loop still works
        (a source being reopened is unhealthy but alive: the systemd watchdog keeps being pinged)."""
        timeout_s = self.config.service.health_timeout_s
        snapshot = self.stats_snapshot()
        now = time.monotonic()
        backend_loaded = self.backend is not None
        stopping = self.stop_event.is_set()
        reasons, alive, ages = [], backend_loaded and not stopping, []
        for camera in self.cameras:
            last = camera.last_output or self.ready_since
            age = None if last is None else now - last
            ages.append(age)
            state = camera.source.stats.state if camera.source is not None else "closed"
            if age is not None and age <= timeout_s:
                continue
            reason = "nothing published for %s s (limit %s s)" % (
                "?" if age is None else "%.1f" % age,
                timeout_s,
            )
            if state == "reconnecting":
                reason += "; source %s unavailable, reopening: %s" % (
                    camera.describe(),
                    camera.source.stats.last_error,
                )
            elif camera.id is not None:
                reason = "%s: %s" % (camera.id, reason)
            reasons.append(reason)
            alive = alive and state == "reconnecting"
        if not backend_loaded:
            reasons = ["backend not loaded"]
        elif stopping:
            reasons = ["stopping"]
        healthy = not reasons
        known = [age for age in ages if age is not None]
        detail = {
            "status": "ok" if healthy else "unhealthy",
            "reason": "; ".join(reasons) or None,
            "alive": alive,
            "last_output_age_s": round(max(known), 3) if len(known) == len(ages) else None,
        }
        keys = ("backend", "source_state", "frames_in", "frames_out", "dropped_frames", "source_reconnects")
        for key in keys + ("mqtt_connected", "mqtt_last_error"):
            detail[key] = snapshot[key]
        if "sources" in snapshot:
            detail["sources"] = snapshot["sources"]
        return healthy, detail

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_frames=None):
        """Capture until every input ends, each has given ``max_frames`` frames, or ``stop()``."""
        inference = threading.Thread(target=self._inference_loop, name="inference")
        inference.start()
        stats_thread = threading.Thread(target=self._stats_loop, name="stats")
        stats_thread.daemon = True
        stats_thread.start()
        captures = []
        for camera in self.cameras:
            name = "capture" if camera.id is None else "capture-%s" % camera.id
            thread = threading.Thread(target=self._capture_loop, args=(camera, max_frames), name=name)
            thread.daemon = True
            thread.start()
            captures.append(thread)
        try:
            while any(thread.is_alive() for thread in captures):
                if self._reload_source is not None:
                    loader, self._reload_source = self._reload_source, None
                    loader()
                for thread in captures:
                    thread.join(0.1)
        finally:
            if any(thread.is_alive() for thread in captures):  # interrupted: let the cameras stop
                self.stop_event.set()
            for thread in captures:
                thread.join()
            while not self._batcher.put(_EndMarker(), timeout=0.5):
                if not inference.is_alive():
                    break
            inference.join()
            self._publish_stats()
        log.info("stopped after %d frames in, %d out", self.stats.frames_in, self.stats.frames_out)

    def _capture_loop(self, camera, max_frames):
        source = camera.source
        while not self.stop_event.is_set():
            frame = source.read(timeout=0.5)
            if frame is None:
                if source.finished:
                    camera.ended = True
                    return
                continue
            try:
                queued = QueuedFrame(camera, frame, camera.reader.prepare(frame.image))
            except Exception:  # noqa: BLE001 - a bad frame must never stop the daemon
                self.stats.frame_errors += 1
                log.exception("%s frame %d: ROI/preprocess failed", camera.describe(), frame.index)
                continue
            while not self._batcher.put(queued, timeout=0.5):
                if self.stop_event.is_set():
                    return
            camera.frames_in += 1
            self.stats.frames_in += 1
            if max_frames and camera.frames_in >= max_frames:
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
        """One backend call for the crops of every frame in the batch (from every camera), then
        each frame published for its camera."""
        try:
            probabilities = queued[0].camera.reader.infer([p for q in queued for p in q.image.prepared])
        except Exception:  # noqa: BLE001 - counted; the next batch may succeed
            self.stats.inference_errors += 1
            log.exception("inference failed for frames %s", [q.frame.index for q in queued])
            return
        self.stats.observe_batch(sum(q.crop_count for q in queued))
        start = 0
        for item in queued:
            count = len(item.image.prepared)
            readings = item.camera.reader.readings(item.image, probabilities[start : start + count])
            start += count
            try:
                self._publish_frame(item, readings)
            except Exception:  # noqa: BLE001 - counted; the next frame may succeed
                self.stats.frame_errors += 1
                log.exception("frame %d: publishing failed", item.frame.index)

    def _publish_frame(self, queued, readings):
        frame, camera = queued.frame, queued.camera
        latency_ms = (time.monotonic() - frame.captured) * 1000.0
        payload = {
            "device_id": self.config.device_id,
            "frame": frame.index,
            "ts": round(frame.timestamp, 3),
            "backend": self.backend.name,
            "latency_ms": round(latency_ms, 2),
        }
        if camera.id is not None:
            payload["source"] = camera.id
        payload.update(Reader.frame_payload(readings))
        aligned = queued.image.alignment is None or queued.image.alignment["ok"]
        if queued.image.alignment is not None:
            payload["alignment"] = queued.image.alignment  # roi.align
        if camera.meter is not None:
            payload["meter"] = camera.meter.update(readings, frame.timestamp, aligned)
        self.publisher.publish(camera.topic("prediction"), payload)
        self._publish_state_on_change(camera, frame, readings)
        if camera.meter is not None:
            self._publish_meter_on_change(camera, frame, payload["meter"])
        self.stats.observe_output(latency_ms)
        camera.frames_out += 1
        camera.last_output = self.stats.last_output
        camera.latest_view = FrameView(
            frame, queued.image.rois, queued.image.prepared, readings, queued.image.roi_image
        )

    def _publish_state_on_change(self, camera, frame, readings):
        smoothed = camera.smoother.update(readings)
        state_readings = [
            postprocess.RoiReading(r.roi_id, r.box, smoothed[r.roi_id], 0.0, r.line, r.cell) for r in readings
        ]
        state = [(r.roi_id, r.digit) for r in state_readings]
        if state == camera.last_state:
            return
        camera.last_state = state
        payload = {"device_id": self.config.device_id, "frame": frame.index, "ts": round(frame.timestamp, 3)}
        if camera.id is not None:
            payload["source"] = camera.id
        payload["number"] = postprocess.compose_number(state_readings)
        payload["rois"] = [{"id": r.roi_id, "digit": r.digit} for r in state_readings]
        self.publisher.publish(camera.topic("state"), payload, qos=1, retain=True)

    def _publish_meter_on_change(self, camera, frame, reading):
        """The meter's checked value, retained on ``meter``, when value or status change."""
        key = (reading["value"], reading["status"])
        if key == camera.last_meter:
            return
        camera.last_meter = key
        payload = meter.state_payload(self.config.device_id, frame.timestamp, reading, camera.id)
        self.publisher.publish(camera.topic("meter"), payload, qos=1, retain=True)

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
