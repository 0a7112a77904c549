"""``make bench``: runtimes and the whole pipeline side by side, in one run.

    python -m bench.run            # quick mode (about 10 minutes; 300 frames per pipeline run)
    python -m bench.run --full     # 1,000 frames per pipeline run, more repetitions

Writes bench/results/bench.json, bench.md and PNG charts, and names the commit it ran at.
The machine is shared and noisy, so classifier calls are interleaved call by call, and
pipeline configurations run as fresh processes interleaved A B A B ...; each figure is a
median with the spread of the runs beside it. Every pipeline video holds a digit in every
ROI and the published readings are checked against the truth. The daemon's own thread
settings (``backend.threads``, ``service.opencv_threads``) are used throughout; other
thread counts appear only as extra, labelled rows.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.broker import Subscriber

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODELS = ROOT / "models"
NANO_FP16_PEAK_GFLOPS = 472.0
FULL_FRAMES = 1000
QUICK_FRAMES = 300


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def git_commit():
    """Short hash of HEAD, with ``+changes`` when the worktree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def daemon_threads():
    """(backend.threads, service.opencv_threads) of the daemon's default config."""
    from daemon import config

    settings = config.from_dict({"source": {"type": "images", "path": "."}})
    return settings.backend.threads, settings.service.opencv_threads


# -- classifier ------------------------------------------------------------------------------
def classifier_runtimes(threads, extra_threads):
    """label -> callable(batch) for every runtime available here, at ``threads``; ONNX Runtime
    FP32 also at ``extra_threads``, labelled."""
    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from daemon.backends.tensorflow import TensorFlowBackend

    runtimes = {}
    tf_backend = TensorFlowBackend(MODELS / "digits.keras", threads=threads).load()
    model = tf_backend.model
    runtimes["tensorflow model.predict"] = lambda batch: model.predict(batch, verbose=0)
    runtimes["tensorflow compiled"] = tf_backend.infer
    runtimes["onnxruntime fp32"] = OnnxRuntimeBackend(MODELS / "digits.onnx", threads=threads).load().infer
    # the daemon's default: the int8 copy, rows it is unsure of again in fp32 (1-2 % of MNIST)
    runtimes["onnxruntime int8 + fp32 recheck"] = (
        OnnxRuntimeBackend(MODELS / "digits.onnx", threads=threads, precision="int8").load().infer
    )
    runtimes["onnxruntime fp16"] = (
        OnnxRuntimeBackend(MODELS / "digits.fp16.onnx", threads=threads).load().infer
    )
    if (MODELS / "small.onnx").exists():
        runtimes["onnxruntime fp32, small network"] = (
            OnnxRuntimeBackend(MODELS / "small.onnx", threads=threads).load().infer
        )
        runtimes["onnxruntime int8 + fp32 recheck, small network"] = (
            OnnxRuntimeBackend(MODELS / "small.onnx", threads=threads, precision="int8").load().infer
        )
    if extra_threads != threads:
        runtimes["onnxruntime fp32, %d threads (not the daemon's)" % extra_threads] = (
            OnnxRuntimeBackend(MODELS / "digits.onnx", threads=extra_threads).load().infer
        )
    engine = MODELS / "digits.fp16.engine"
    try:
        import tensorrt  # noqa: F401

        from daemon.tensorrt.backend import TensorRTBackend

        if engine.exists():
            trt_backend = TensorRTBackend(engine, MODELS / "digits.onnx", max_batch=32).load()
            runtimes["tensorrt %s" % trt_backend.name.split("-")[-1]] = trt_backend.infer_all
    except ImportError:
        pass
    return runtimes


def bench_classifier(batches, repetitions, threads, extra_threads=2):
    from daemon.preprocess import normalise_uint8
    from engine_build import mnist

    images = normalise_uint8(mnist.load_split("test")[0][: max(batches)])
    runtimes = classifier_runtimes(threads, extra_threads)
    timings = {(name, b): [] for name in runtimes for b in batches}
    for run in runtimes.values():  # warm-up: first calls trace, allocate, pick kernels
        for b in batches:
            for _ in range(3):
                run(images[:b])
    for repetition in range(repetitions):
        for b in batches:
            for name, run in runtimes.items():  # interleaved: every runtime sees the same noise
                if name.endswith("model.predict") and repetition >= max(5, repetitions // 5):
                    continue  # ~50 ms a call: fewer samples suffice
                started = time.perf_counter()
                run(images[:b])
                timings[(name, b)].append(time.perf_counter() - started)
    rows = []
    for (name, b), samples in timings.items():
        p50 = percentile(samples, 50)
        rows.append(
            {
                "runtime": name,
                "batch": b,
                "calls": len(samples),
                "latency_p50_ms": round(p50 * 1e3, 3),
                "latency_p99_ms": round(percentile(samples, 99) * 1e3, 3),
                "images_per_s": round(b / p50, 1),
            }
        )
    for row in rows:
        reference = next(r for r in rows if r["runtime"] == "onnxruntime fp32" and r["batch"] == row["batch"])
        row["ratio_to_onnxruntime_fp32"] = round(row["images_per_s"] / reference["images_per_s"], 3)
    return rows


def cpu_peak_gflops(repeats=15, size=2048):
    """Measured float32 matmul rate of this CPU (NumPy/BLAS, all cores; the best of ``repeats``
    calls, as other jobs on a shared machine only ever make it lower)."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    np.dot(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.dot(a, b)
        times.append(time.perf_counter() - started)
    return 2.0 * size**3 / min(times) / 1e9


# -- pipeline ---------------------------------------------------------------------------------
def probe_once(video, backend="onnxruntime", boxes=0, realtime=False, mqtt_port=0, sources=1):
    """One fresh process of bench.probe; its JSON line, with ``recorded`` (per-frame times and
    numbers) and the readings checked against the video's truth."""
    from bench import videos

    with tempfile.TemporaryDirectory() as workdir:
        record = Path(workdir) / "frames.json"
        command = [sys.executable, "-m", "bench.probe", "--video", str(video), "--backend", backend]
        command += ["--boxes", str(boxes), "--record", str(record)]
        if realtime:
            command.append("--realtime")
        if sources > 1:
            command += ["--sources", str(sources)]
        if mqtt_port:
            command += ["--mqtt-port", str(mqtt_port)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        started = time.monotonic()
        output = subprocess.run(command, cwd=str(ROOT), capture_output=True, text=True, env=env, timeout=900)
        if output.returncode != 0:
            raise RuntimeError("probe failed: %s" % output.stderr[-2000:])
        result = json.loads(output.stdout.strip().splitlines()[-1])
        result["process_s"] = round(time.monotonic() - started, 2)
        recorded = {int(k): v for k, v in json.loads(record.read_text()).items()}
    result.update(check_readings(recorded, videos.load_truth(video)))
    result["recorded"] = recorded
    return result


def check_readings(recorded, truth):
    """Frames and digits published right, from the probe's record and the video's truth."""
    published = [(index, frame["number"]) for index, frame in recorded.items() if "number" in frame]
    frames_right = sum(number == truth.get(index) for index, number in published)
    digits = sum(len(truth.get(index) or "") for index, _ in published)
    digits_right = sum(
        sum(a == b for a, b in zip(number or "", truth.get(index) or "")) for index, number in published
    )
    return {
        "frames_checked": len(published),
        "frames_read_right": frames_right,
        "digits_checked": digits,
        "digits_read_right": digits_right,
    }


def summarise(label, runs, **fields):
    """The median run of ``runs`` (by CPU ms per frame) with every run's fps and CPU ms beside it
    and the readings summed over the runs."""
    ordered = sorted(runs, key=lambda r: r["cpu_ms_per_frame"])
    row = {k: v for k, v in ordered[len(ordered) // 2].items() if k != "recorded"}
    row.update(fields, label=label, runs=len(runs))
    row["cpu_ms_per_frame_runs"] = [r["cpu_ms_per_frame"] for r in ordered]
    row["fps_runs"] = sorted(r["fps"] for r in runs)
    row["fps"] = float(np.median(row["fps_runs"]))
    for key in ("frames_checked", "frames_read_right", "digits_checked", "digits_read_right"):
        row[key] = sum(r[key] for r in runs)
    return row


def interleaved(configurations, runs):
    """{label: summary}: each configuration (label -> probe_once keyword arguments) run
    ``runs`` times as fresh processes, in the order A B C A B C ..."""
    results = {label: [] for label in configurations}
    for run in range(runs):
        for label, arguments in configurations.items():
            print("  %s (run %d of %d)" % (label, run + 1, runs), flush=True)
            results[label].append(probe_once(**arguments))
    return {label: summarise(label, results[label]) for label in configurations}


def decode_ms_per_frame(video):
    """CPU ms to read and decode one frame of ``video`` with OpenCV (the source's share)."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames, started = 0, time.process_time()
    while capture.read()[0]:
        frames += 1
    capture.release()
    return round(1000.0 * (time.process_time() - started) / max(frames, 1), 3)


def bench_backends(frames, backends, runs):
    """Unpaced file, centre ROI, 640x480 and 1280x720, every backend, interleaved."""
    from bench.videos import digit_video

    configurations = {}
    for width, height in ((640, 480), (1280, 720)):
        video = digit_video(width, height, frames)
        for backend in backends:
            configurations["%s %dx%d" % (backend, width, height)] = dict(video=video, backend=backend)
    return [dict(row, kind="unpaced") for row in interleaved(configurations, runs).values()]


def bench_roi_count(frames, runs, counts=(1, 4, 16, 64)):
    """640x480, N boxes each holding its own digit, ONNX Runtime, interleaved."""
    from bench.videos import digit_video

    configurations = {
        "%d boxes" % n: dict(video=digit_video(640, 480, frames, boxes=n), boxes=n) for n in counts
    }
    return [dict(row, kind="rois") for row in interleaved(configurations, runs).values()]


def bench_frame_size(frames, runs, sizes=((320, 240), (640, 480), (1280, 720), (1920, 1080))):
    """Centre ROI, the digit the same size in pixels in every frame size, interleaved; with the
    decode cost of each size measured on its own."""
    from bench.videos import digit_video

    configurations = {"%dx%d" % size: dict(video=digit_video(size[0], size[1], frames)) for size in sizes}
    rows = []
    for label, row in interleaved(configurations, runs).items():
        row["decode_ms_per_frame"] = decode_ms_per_frame(configurations[label]["video"])
        rows.append(dict(row, kind="frame size"))
    return rows


class TimedSubscriber(Subscriber):
    """A real MQTT subscriber that notes the wall-clock time each message arrives:
    ``received`` holds (time.time() on arrival, payload dict)."""

    def __init__(self, port, topic):
        Subscriber.__init__(self, port, topic, client_id="bench-latency-%d" % os.getpid())
        self.received = []

    def _on_message(self, client, userdata, message):
        arrived = time.time()
        with self._lock:
            self.received.append((arrived, json.loads(message.payload.decode("utf-8"))))

    def wait_for(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)


def subscriber_latencies(received, recorded):
    """Match what the subscriber received to the probe's record by the payload's ``frame``.

    ``received``: [(arrival time.time(), payload)]; ``recorded``: {frame index: {read_started,
    decoded}}. Returns ms from the start of reading the frame (before decode) to arrival,
    from decode to arrival, and how many messages matched; a message whose ``ts`` does not
    agree with the recorded decode time (beyond its rounding to 1 ms) counts as mismatched."""
    read_to_subscriber, decoded_to_subscriber, mismatched = [], [], 0
    for arrived, payload in received:
        frame = recorded.get(payload.get("frame"))
        if frame is None or abs(payload.get("ts", 0.0) - frame["decoded"]) > 0.0011:
            mismatched += 1
            continue
        read_to_subscriber.append(1000.0 * (arrived - frame["read_started"]))
        decoded_to_subscriber.append(1000.0 * (arrived - frame["decoded"]))
    return {
        "matched": len(read_to_subscriber),
        "mismatched": mismatched,
        "read_to_subscriber_ms": read_to_subscriber,
        "decoded_to_subscriber_ms": decoded_to_subscriber,
    }


def latency_figures(samples):
    return {
        "p50": round(percentile(samples, 50), 2),
        "p95": round(percentile(samples, 95), 2),
        "p99": round(percentile(samples, 99), 2),
    }


def bench_latency(frames, backends, runs):
    """30 fps from a file (paced like a camera), centre ROI, predictions through a real Mosquitto
    to a real subscriber in this process: capture-to-subscriber latency, backends interleaved."""
    from bench.videos import digit_video
    from tools.broker import Broker, mosquitto_binary

    if mosquitto_binary() is None:
        print("  (no mosquitto: latency at the subscriber skipped)")
        return []
    video = digit_video(640, 480, frames)
    samples = {backend: [] for backend in backends}
    per_run = {backend: [] for backend in backends}
    with tempfile.TemporaryDirectory() as workdir:
        broker = Broker(workdir).start()
        try:
            for run in range(runs):
                for backend in backends:
                    print(
                        "  30 fps %s, Mosquitto, subscriber (run %d of %d)" % (backend, run + 1, runs),
                        flush=True,
                    )
                    subscriber = TimedSubscriber(broker.port, "digitd/bench/prediction").start()
                    result = probe_once(video, backend, realtime=True, mqtt_port=broker.port)
                    subscriber.wait_for(result["frames"])
                    subscriber.stop()
                    matched = subscriber_latencies(subscriber.received, result.pop("recorded"))
                    result.update(
                        received=len(subscriber.received),
                        matched=matched["matched"],
                        mismatched=matched["mismatched"],
                        subscriber_p50_ms=latency_figures(matched["read_to_subscriber_ms"])["p50"],
                    )
                    per_run[backend].append(result)
                    samples[backend].append(matched)
        finally:
            broker.stop()
    rows = []
    for backend in backends:
        runs_of = per_run[backend]
        row = summarise("%s 30 fps" % backend, runs_of, kind="paced 30 fps + MQTT")
        pooled = [ms for m in samples[backend] for ms in m["read_to_subscriber_ms"]]
        after_decode = [ms for m in samples[backend] for ms in m["decoded_to_subscriber_ms"]]
        row.update(
            frames_sent=sum(r["frames"] for r in runs_of),
            received=sum(r["received"] for r in runs_of),
            matched=sum(r["matched"] for r in runs_of),
            mismatched=sum(r["mismatched"] for r in runs_of),
            dropped=sum(r["dropped"] for r in runs_of),
            capture_to_subscriber_ms=latency_figures(pooled),
            decoded_to_subscriber_ms=latency_figures(after_decode),
            capture_to_subscriber_p50_runs=sorted(r["subscriber_p50_ms"] for r in runs_of),
            publish_p50_ms_runs=sorted(r["latency_p50_ms"] for r in runs_of),
            histogram_ms=[round(ms, 2) for ms in pooled],
        )
        rows.append(row)
    return rows


def bench_sources(frames, runs, counts=(1, 2, 4)):
    """Several cameras in one pipeline (each the same video, as fast as it goes): CPU ms per
    frame and mean batch, counts interleaved (1, 2, 4, 1, 2, 4, ...)."""
    from bench.videos import digit_video

    video = digit_video(640, 480, frames)
    configurations = {"%d cameras" % n: dict(video=video, sources=n) for n in counts}
    return [dict(row, kind="sources") for row in interleaved(configurations, runs).values()]


# -- report -----------------------------------------------------------------------------------
def plots(report):
    """classifier.png, pipeline_growth.png and latency.png under bench/results/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    commit = report["commit"]
    figure, axis = plt.subplots(figsize=(8, 5))
    for name in sorted({r["runtime"] for r in report["classifier"]}):
        rows = sorted((r for r in report["classifier"] if r["runtime"] == name), key=lambda r: r["batch"])
        axis.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("batch size")
    axis.set_ylabel("images / s (median call)")
    axis.set_title(
        "classifier throughput on this host, %d thread(s), commit %s" % (report["threads"], commit)
    )
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(str(RESULTS / "classifier.png"), dpi=100)
    plt.close(figure)

    def with_spread(axis, xs, rows, color, label):
        medians = [r["cpu_ms_per_frame"] for r in rows]
        low = [m - min(r["cpu_ms_per_frame_runs"]) for m, r in zip(medians, rows)]
        high = [max(r["cpu_ms_per_frame_runs"]) - m for m, r in zip(medians, rows)]
        axis.errorbar(xs, medians, yerr=[low, high], marker="o", capsize=3, color=color, label=label)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rois, sizes = report["roi_count"], report["frame_size"]
    with_spread(left, [r["rois"] for r in rois], rois, "tab:blue", "CPU ms / frame (median, runs)")
    left.set_xscale("log", base=2)
    left.set_xlabel("ROIs per frame, each a digit (640x480, onnxruntime)")
    left.set_ylabel("CPU ms per frame")
    left.legend()
    left.grid(True, alpha=0.3)
    pixels = [r["frame_size"][0] * r["frame_size"][1] / 1e6 for r in sizes]
    with_spread(right, pixels, sizes, "tab:red", "whole process")
    right.plot(
        pixels, [r["decode_ms_per_frame"] for r in sizes], marker="s", color="grey", label="decode only"
    )
    right.set_xlabel("megapixels per frame (centre ROI, digit %d px)" % report["centre_digit_px"])
    right.set_ylabel("CPU ms per frame")
    right.legend()
    right.grid(True, alpha=0.3)
    figure.suptitle("pipeline cost growth (unpaced file, fresh processes interleaved), commit %s" % commit)
    figure.tight_layout()
    figure.savefig(str(RESULTS / "pipeline_growth.png"), dpi=100)
    plt.close(figure)

    if report["latency"]:
        figure, axis = plt.subplots(figsize=(8, 4.5))
        for row in report["latency"]:
            samples = np.sort(row["histogram_ms"])
            axis.plot(samples, np.arange(1, len(samples) + 1) / len(samples), label=row["backend"])
        axis.set_xscale("log")
        axis.set_xlabel("ms from reading the frame (before decode) to the subscriber receiving it")
        axis.set_ylabel("fraction of frames")
        axis.set_title("30 fps, centre ROI, real Mosquitto, commit %s" % commit)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(str(RESULTS / "latency.png"), dpi=100)
        plt.close(figure)


def runs_text(values, fmt="%.2f"):
    return ", ".join(fmt % v for v in values)


def speed_cells(row):
    """The "fps (runs) | CPU ms/frame (runs)" cells of a pipeline row."""
    return "%.0f (%s) | %.2f (%s)" % (
        row["fps"],
        runs_text(row["fps_runs"], "%.0f"),
        row["cpu_ms_per_frame"],
        runs_text(row["cpu_ms_per_frame_runs"]),
    )


def readings_text(row):
    text = "%d / %d" % (row["frames_read_right"], row["frames_checked"])
    if row["rois"] > 1:
        text += " (digits %d / %d)" % (row["digits_read_right"], row["digits_checked"])
    return text


def markdown(report):
    commit = report["commit"]
    frames = report["frames_per_run"]
    lines = [
        "# digitd benchmark, commit %s" % commit,
        "",
        "Host: %s, %d cores, Python %s. Command: `%s`, %.0f s. Every table below is from this one run "
        "at commit %s."
        % (
            report["host"]["machine"],
            report["host"]["cores"],
            report["host"]["python"],
            report["command"],
            report["seconds"],
            commit,
        ),
        "",
        "%s: %d frames per pipeline run; pipeline figures are the median of %d fresh processes "
        "run interleaved (A B A B ...), the runs in brackets. Thread settings: the daemon's "
        "(backend.threads %d, service.opencv_threads %d)."
        % (
            "Full mode" if report["full"] else "**Quick mode** (`--full` runs %d)" % FULL_FRAMES,
            frames,
            report["runs"],
            report["threads"],
            report["opencv_threads"],
        ),
        "",
        "## Classifier (median of interleaved calls, %d thread(s) as the daemon, commit %s)"
        % (report["threads"], commit),
        "",
        "| runtime | batch | p50 ms | p99 ms | images/s | vs ORT fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(report["classifier"], key=lambda r: (r["batch"], r["runtime"])):
        lines.append(
            "| %s | %d | %.3f | %.3f | %.0f | %.2f |"
            % (
                r["runtime"],
                r["batch"],
                r["latency_p50_ms"],
                r["latency_p99_ms"],
                r["images_per_s"],
                r["ratio_to_onnxruntime_fp32"],
            )
        )
    limit = report["physical_limit"]
    lines += [
        "",
        "## Physical limit (commit %s)" % commit,
        "",
        "Model: %.2f MFLOPs per image. Reference rate: NumPy's float32 matmul (2048x2048, all cores, "
        "best of 15) reached %.1f GFLOPS in this run. It is a reference, not a hard peak: ONNX Runtime's "
        "own kernels (MLAS) can beat NumPy's BLAS, so more than 100 %% is possible."
        % (limit["model_mflops"], limit["cpu_peak_gflops"]),
        "Best measured: %s at batch %d, %.0f images/s = %.1f GFLOPS = %.0f %% of the matmul reference "
        "(which alone would allow %.0f images/s)."
        % (
            limit["best_runtime"],
            limit["best_batch"],
            limit["best_images_per_s"],
            limit["achieved_gflops"],
            limit["percent_of_peak"],
            limit["peak_images_per_s"],
        ),
        "",
        "## Pipeline by backend (unpaced file, centre ROI, commit %s)" % commit,
        "",
        "| backend | frame | fps (runs) | CPU ms/frame (runs) | peak RSS MB | start to first prediction s "
        "| frames read right |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in report["backends"]:
        lines.append(
            "| %s | %dx%d | %s | %.0f | %.2f | %s |"
            % (
                r["backend"],
                r["frame_size"][0],
                r["frame_size"][1],
                speed_cells(r),
                r["peak_rss_mb"],
                r["startup_to_first_prediction_s"],
                readings_text(r),
            )
        )
    if report["latency"]:
        lines += [
            "",
            "## Latency at the subscriber (30 fps, 640x480, centre ROI, real Mosquitto, commit %s)" % commit,
            "",
            "The clock starts just before the source reads the frame from the file, i.e. before "
            "decode (a camera's exposure and driver time come before that and are not in it), and "
            "stops when a real MQTT subscriber in another process receives the prediction; "
            "messages are matched to frames by the payload's `frame` (and `ts` checked). "
            "Percentiles over every frame of every run; the p50 of each run in brackets.",
            "",
            "| backend | frames received / sent | p50 ms (runs) | p95 ms | p99 ms | p50 from decoded | "
            "p50 to publish call (runs) | dropped | frames read right |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for r in report["latency"]:
            figures = r["capture_to_subscriber_ms"]
            lines.append(
                "| %s | %d / %d | %.2f (%s) | %.2f | %.2f | %.2f | %s | %d | %s |"
                % (
                    r["backend"],
                    r["matched"],
                    r["frames_sent"],
                    figures["p50"],
                    runs_text(r["capture_to_subscriber_p50_runs"]),
                    figures["p95"],
                    figures["p99"],
                    r["decoded_to_subscriber_ms"]["p50"],
                    runs_text(r["publish_p50_ms_runs"]),
                    r["dropped"],
                    readings_text(r),
                )
            )
    lines += [
        "",
        "## ROIs per frame, every ROI a digit (640x480, onnxruntime, unpaced, commit %s)" % commit,
        "",
        "| ROIs (1: one box, the whole frame) | fps (runs) | CPU ms/frame (runs) | CPU ms per ROI | mean batch "
        "| read right |",
        "| ---: | --- | --- | ---: | ---: | --- |",
    ]
    for r in report["roi_count"]:
        lines.append(
            "| %d | %s | %.2f | %.1f | %s |"
            % (
                r["rois"],
                speed_cells(r),
                r["cpu_ms_per_frame"] / r["rois"],
                r["mean_batch"],
                readings_text(r),
            )
        )
    lines += [
        "",
        "## Frame size, the digit %d px in every size (centre ROI, onnxruntime, unpaced, commit %s)"
        % (report["centre_digit_px"], commit),
        "",
        "| frame | fps (runs) | CPU ms/frame (runs) | of which decode (measured alone) | frames read right |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for r in report["frame_size"]:
        lines.append(
            "| %dx%d | %s | %.2f | %s |"
            % (
                r["frame_size"][0],
                r["frame_size"][1],
                speed_cells(r),
                r["decode_ms_per_frame"],
                readings_text(r),
            )
        )
    sources = report["sources"]
    if sources:
        single = sources[0]["cpu_ms_per_frame"]
        lines += [
            "",
            "## Several cameras, one pipeline (640x480, centre ROI, onnxruntime, commit %s)" % commit,
            "",
            "| cameras | frames | fps (all cameras) | CPU ms/frame (runs) | vs one camera | mean batch |",
            "| ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for r in sources:
            lines.append(
                "| %d | %d | %.0f | %.2f (%s) | %.2f | %.2f |"
                % (
                    r["sources"],
                    r["frames"],
                    r["fps"],
                    r["cpu_ms_per_frame"],
                    runs_text(r["cpu_ms_per_frame_runs"]),
                    r["cpu_ms_per_frame"] / single,
                    r["mean_batch"],
                )
            )
    if report.get("modes"):
        from bench import modes

        lines += [
            "",
            "## ROI modes (the daemon's reader in one process, modes interleaved frame by frame, commit %s)"
            % commit,
            "",
            modes.markdown(report["modes"]),
        ]
    from bench import nano

    lines += ["", "## Jetson Nano budget, estimated (commit %s)" % commit, ""]
    lines.append(nano.markdown(report["nano"], report["nano_budget"], commit))
    lines += ["## Targets (commit %s)" % commit, "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        lines.append("| %s | %s | %s |" % (t["target"], t["measured"], "yes" if t["met"] else "**no**"))
    lines += ["", "![classifier](classifier.png)", "", "![pipeline growth](pipeline_growth.png)", ""]
    if report["latency"]:
        lines += ["![latency](latency.png)", ""]
    return "\n".join(lines)


def targets(report):
    def classifier(name, batch):
        return next((r for r in report["classifier"] if r["runtime"] == name and r["batch"] == batch), None)

    def unpaced(backend, size=(640, 480)):
        return next(
            (
                r
                for r in report["backends"]
                if r["backend"].startswith(backend) and tuple(r["frame_size"]) == size
            ),
            None,
        )

    out = []
    ort64 = classifier("onnxruntime fp32", 64)
    if ort64:
        out.append(
            {
                "target": "ONNX Runtime >= 20,000 images/s at batch 64",
                "measured": "%.0f" % ort64["images_per_s"],
                "met": ort64["images_per_s"] >= 20000,
            }
        )
    tf1 = classifier("tensorflow compiled", 1)
    if tf1:
        out.append(
            {
                "target": "TensorFlow compiled call <= 1 ms at batch 1",
                "measured": "%.3f ms" % tf1["latency_p50_ms"],
                "met": tf1["latency_p50_ms"] <= 1.0,
            }
        )
    for backend, goal in (("onnxruntime", 300), ("tensorflow", 150)):
        row = unpaced(backend)
        if row:
            out.append(
                {
                    "target": "pipeline >= %d fps unpaced, %s, centre ROI, 640x480" % (goal, backend),
                    "measured": "%.0f fps" % row["fps"],
                    "met": row["fps"] >= goal,
                }
            )
    for row in report["latency"]:
        figures = row["capture_to_subscriber_ms"]
        if row["backend"].startswith("onnxruntime"):
            out.append(
                {
                    "target": "p50 capture to subscriber < 3 ms at 30 fps, centre ROI (%s)" % row["backend"],
                    "measured": "%.2f ms" % figures["p50"],
                    "met": figures["p50"] < 3,
                }
            )
        out.append(
            {
                "target": "p99 capture to subscriber <= 20 ms at 30 fps (%s)" % row["backend"],
                "measured": "%.2f ms" % figures["p99"],
                "met": figures["p99"] <= 20,
            }
        )
    for backend, limit in (("onnxruntime", 200), ("tensorflow", 1024)):
        row = unpaced(backend)
        if row:
            out.append(
                {
                    "target": "RSS <= %d MB with %s" % (limit, backend),
                    "measured": "%.0f MB" % row["peak_rss_mb"],
                    "met": row["peak_rss_mb"] <= limit,
                }
            )
    row = unpaced("onnxruntime")
    if row:
        out.append(
            {
                "target": "start-up to first prediction <= 3 s with ONNX Runtime",
                "measured": "%.2f s" % row["startup_to_first_prediction_s"],
                "met": row["startup_to_first_prediction_s"] <= 3,
            }
        )
    rows = report["backends"] + report["latency"] + report["roi_count"] + report["frame_size"]
    checked = sum(r["digits_checked"] for r in rows)
    right = sum(r["digits_read_right"] for r in rows)
    out.append(
        {
            "target": "pipeline readings checked: >= 98 % of published digits right",
            "measured": "%d / %d" % (right, checked),
            "met": checked > 0 and right >= 0.98 * checked,
        }
    )
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="digitd benchmarks")
    parser.add_argument(
        "--full", action="store_true", help="%d frames per pipeline run, more repetitions" % FULL_FRAMES
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per pipeline run (default %d, --full %d)" % (QUICK_FRAMES, FULL_FRAMES),
    )
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per pipeline configuration")
    return parser.parse_args(argv)


def main(args):
    """Run everything, print JSON and the Markdown tables, write files under bench/results/."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench import modes, nano, videos
    from daemon import model_meta

    RESULTS.mkdir(parents=True, exist_ok=True)
    frames = args.frames or (FULL_FRAMES if args.full else QUICK_FRAMES)
    repetitions = 200 if args.full else 40
    backends = ["onnxruntime", "tensorflow"]
    threads, opencv_threads = daemon_threads()
    started = time.time()
    commit = git_commit()
    print("commit %s; %d frames per pipeline run, %d runs each" % (commit, frames, args.runs), flush=True)
    if frames < FULL_FRAMES:
        print(
            "quick mode: fewer than %d frames per pipeline run (--full for those)" % FULL_FRAMES, flush=True
        )
    print("classifier: %d interleaved repetitions, %d thread(s)" % (repetitions, threads), flush=True)
    classifier = bench_classifier([1, 8, 32, 64, 128], repetitions, threads)
    peak = cpu_peak_gflops()
    mflops = model_meta.read(MODELS / "digits.keras")["flops_per_image"] / 1e6
    best = max(
        # float maths only: the matmul reference is float32
        (r for r in classifier if "small network" not in r["runtime"] and "int8" not in r["runtime"]),
        key=lambda r: r["images_per_s"],
    )
    achieved = best["images_per_s"] * mflops / 1e3
    command = "make bench" + (' BENCH_ARGS="%s"' % " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    report = {
        "commit": commit,
        "command": command,
        "full": frames >= FULL_FRAMES,
        "frames_per_run": frames,
        "runs": args.runs,
        "threads": threads,
        "opencv_threads": opencv_threads,
        "centre_digit_px": videos.CENTRE_DIGIT_PX,
        "host": {
            "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "classifier": classifier,
        "physical_limit": {
            "model_mflops": round(mflops, 2),
            "cpu_peak_gflops": round(peak, 1),
            "best_runtime": best["runtime"],
            "best_batch": best["batch"],
            "best_images_per_s": best["images_per_s"],
            "achieved_gflops": round(achieved, 1),
            "percent_of_peak": round(100 * achieved / peak, 1),
            "peak_images_per_s": round(peak * 1e3 / mflops),
            "jetson_nano_gpu_estimate": {
                "fp16_peak_gflops": NANO_FP16_PEAK_GFLOPS,
                "upper_bound_images_per_s": round(NANO_FP16_PEAK_GFLOPS * 1e3 / mflops),
                "note": "estimate from FLOPs, not a measurement",
            },
        },
    }
    print("pipeline by backend (fresh processes, interleaved)", flush=True)
    report["backends"] = bench_backends(frames, backends, args.runs)
    print("latency at the subscriber", flush=True)
    report["latency"] = bench_latency(
        frames, backends, max(2, args.runs - 1) if frames < FULL_FRAMES else args.runs
    )
    print("ROIs per frame, every ROI a digit", flush=True)
    report["roi_count"] = bench_roi_count(frames, args.runs)
    print("frame size, the digit the same size", flush=True)
    report["frame_size"] = bench_frame_size(frames, args.runs)
    print("several cameras", flush=True)
    report["sources"] = bench_sources(frames, args.runs)
    print("ROI modes: CPU ms per frame, interleaved, every ROI a digit", flush=True)
    report["modes"] = modes.measure(120 if args.full else 60)
    print("single-core speed of this host (7-Zip) for the Nano estimate", flush=True)
    report["nano"] = nano.scale(nano.host_rating_per_core())
    slower = report["nano"]["nano_slower"]
    report["nano_budget"] = nano.budget(report["modes"], report["frame_size"], slower) if slower else []
    report["targets"] = targets(report)
    report["seconds"] = round(time.time() - started, 1)
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / "bench.md").write_text(text)
    plots(report)
    summary = {
        k: report[k] for k in ("commit", "command", "frames_per_run", "targets", "physical_limit", "nano")
    }
    print(json.dumps(summary, indent=1))
    print(text)
    print(
        "wrote %s/bench.json, bench.md, classifier.png, pipeline_growth.png, latency.png in %.0f s"
        % (RESULTS, report["seconds"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
