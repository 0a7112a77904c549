"""Run the pipeline in this process on a video and print one JSON line of measurements.

    python -m bench.probe --video V --backend onnxruntime [--boxes 8] [--sources 2] [--realtime]
        [--mqtt-port P] [--record FILE]

Used by bench.run in a fresh process per configuration, so RSS and start-up are clean.
Thread settings are the daemon's (config defaults) unless given. ``--record`` writes, per
frame, when the source began reading it (before decode), when it was decoded (the
payload's ``ts``) and the number published, so bench.run can match what a subscriber
received to the moment the frame was read.
"""

import argparse
import json
import os
import resource
import sys
import time

STARTED = time.monotonic()


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", required=True)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--boxes", type=int, default=0, help="0 = centre ROI, else N fixed boxes")
    parser.add_argument("--realtime", action="store_true")
    parser.add_argument("--mqtt-port", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=0, help="per camera")
    parser.add_argument("--sources", type=int, default=1, help="cameras in one pipeline, each the video")
    parser.add_argument("--threads", type=int, default=None, help="backend.threads (default: the config's)")
    parser.add_argument(
        "--opencv-threads", type=int, default=None, help="service.opencv_threads (default: the config's)"
    )
    parser.add_argument("--record", default=None, help="write per-frame times and numbers (JSON) here")
    parser.add_argument(
        "--max-wait-ms", type=float, default=None, help="batching.max_wait_ms (default: the config's)"
    )
    return parser.parse_args(argv)


def peak_rss_mb():
    """VmHWM of this process. (ru_maxrss survives fork+exec, so it would report the parent's peak.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def box_grid(count, width, height):
    """``count`` boxes tiled over the frame, ids b0..bN."""
    columns = int(count**0.5 + 0.999)
    rows = (count + columns - 1) // columns
    w, h = width // columns, height // rows
    return [
        {"id": "b%d" % i, "x": (i % columns) * w, "y": (i // columns) * h, "w": w, "h": h}
        for i in range(count)
    ]


def record_frames(pipeline):
    """{frame index: {read_started, decoded, number}}, filled while ``pipeline`` runs.

    ``read_started`` is taken just before the source reads (and decodes) a frame,
    ``decoded`` is the frame's own timestamp (after decode; the payload's ``ts``)."""
    from daemon.reader import Reader

    frames = {}
    for source_class in {type(camera.source) for camera in pipeline.cameras}:
        read_image, make_frame = source_class._read_image, source_class._make_frame

        def timed_read_image(source, read_image=read_image):
            source.bench_read_started = time.time()
            return read_image(source)

        def timed_make_frame(source, image, make_frame=make_frame):
            frame = make_frame(source, image)
            frames[frame.index] = {"read_started": source.bench_read_started, "decoded": frame.timestamp}
            return frame

        source_class._read_image, source_class._make_frame = timed_read_image, timed_make_frame
    published = pipeline._publish_frame

    def publish_frame(work, readings):
        published(work, readings)
        frames[work.frame.index]["number"] = Reader.frame_payload(readings)["number"]

    pipeline._publish_frame = publish_frame
    return frames


def main(args):
    import cv2
    import numpy as np

    from daemon import config as config_module
    from daemon import sources
    from daemon.pipeline import Pipeline

    capture = cv2.VideoCapture(args.video)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    roi = (
        {"mode": "boxes", "boxes": box_grid(args.boxes, width, height)} if args.boxes else {"mode": "center"}
    )
    mqtt = {"enabled": bool(args.mqtt_port), "host": "127.0.0.1", "port": args.mqtt_port or 1883}
    settings = {
        "device_id": "bench",
        "log_level": "WARNING",
        "stats_interval_s": 3600,
        "backend": {"type": args.backend},
        "mqtt": mqtt,
        "http": {"enabled": False},
    }
    if args.threads is not None:
        settings["backend"]["threads"] = args.threads
    if args.opencv_threads is not None:
        settings["service"] = {"opencv_threads": args.opencv_threads}
    if args.max_wait_ms is not None:
        settings["batching"] = {"max_wait_ms": args.max_wait_ms}
    camera = {"type": "file", "path": args.video, "realtime": args.realtime}
    if args.sources > 1:
        settings["sources"] = [dict(camera, id="cam%d" % n, roi=roi) for n in range(args.sources)]
    else:
        settings.update(source=camera, roi=roi)
    config = config_module.from_dict(settings)
    pipeline = Pipeline(config)
    if args.record:  # the sources made here, so their reads are timed from the first frame
        for camera in pipeline.cameras:
            camera.source = sources.create_source(camera.settings)
        recorded = record_frames(pipeline)
    pipeline.open()
    loaded = time.monotonic()
    first_output = [None]
    original = pipeline._publish_frame

    def publish_frame(work, readings):
        original(work, readings)
        if first_output[0] is None:
            first_output[0] = time.monotonic()

    pipeline._publish_frame = publish_frame
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    pipeline.run(max_frames=args.max_frames or None)
    wall = time.monotonic() - wall_before
    cpu = time.process_time() - cpu_before
    if args.mqtt_port:
        deadline = time.monotonic() + 10
        while pipeline.publisher.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
    latencies = np.array(pipeline.stats.latencies_ms or [0.0])
    frames = pipeline.stats.frames_out
    result = {
        "backend": pipeline.backend.name,
        "frame_size": [width, height],
        "rois": max(1, args.boxes),
        "sources": args.sources,
        "realtime": args.realtime,
        "frames": frames,
        "dropped": pipeline.source.stats.dropped,
        "fps": round(frames / wall, 1),
        "cpu_ms_per_frame": round(1000.0 * cpu / max(frames, 1), 3),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_batch": round(pipeline.stats.crops / float(max(pipeline.stats.batches, 1)), 2),
        "load_s": round(loaded - STARTED, 2),
        "startup_to_first_prediction_s": round((first_output[0] or time.monotonic()) - STARTED, 3),
        "peak_rss_mb": peak_rss_mb(),
    }
    result["opencv_threads"] = config.service.opencv_threads
    result["backend_threads"] = config.backend.threads
    pipeline.close()
    if args.record:
        with open(args.record, "w") as out:
            json.dump(recorded, out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(parse_args()))
