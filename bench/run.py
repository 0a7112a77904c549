"""``make bench``: runtimes and the whole pipeline side by side, in one run.

    python -m bench.run            # quick mode (a few minutes)
    python -m bench.run --full     # more repetitions and frames

Writes bench/results/bench.json, bench.md and PNG charts. The machine is shared
and noisy, so runtimes are interleaved call by call and reported as medians and
ratios to ONNX Runtime FP32 from the same run.
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VIDEOS = RESULTS / "videos"
MODELS = ROOT / "models"
NANO_FP16_PEAK_GFLOPS = 472.0


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# -- classifier ------------------------------------------------------------------------------
def classifier_runtimes(threads):
    """name -> callable(batch) for every runtime available here."""
    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from daemon.backends.tensorflow import TensorFlowBackend

    runtimes = {}
    tf_backend = TensorFlowBackend(MODELS / "digits.keras", threads=threads).load()
    model = tf_backend.model
    runtimes["tensorflow model.predict"] = lambda batch: model.predict(batch, verbose=0)
    runtimes["tensorflow compiled"] = tf_backend.infer
    runtimes["onnxruntime fp32"] = OnnxRuntimeBackend(MODELS / "digits.onnx", threads=threads).load().infer
    runtimes["onnxruntime fp16"] = (
        OnnxRuntimeBackend(MODELS / "digits.fp16.onnx", threads=threads).load().infer
    )
    runtimes["onnxruntime fp32, 1 thread"] = (
        OnnxRuntimeBackend(MODELS / "digits.onnx", threads=1).load().infer
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


def bench_classifier(batches, repetitions, threads):
    from daemon.preprocess import normalise_uint8
    from engine_build import mnist

    images = normalise_uint8(mnist.load_split("test")[0][: max(batches)])
    runtimes = classifier_runtimes(threads)
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


def cpu_peak_gflops(repeats=5, size=2048):
    """Measured float32 matmul rate of this CPU (NumPy/BLAS, all cores)."""
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
def ensure_video(width, height, digits):
    VIDEOS.mkdir(parents=True, exist_ok=True)
    path = VIDEOS / ("digits_%dx%d_%d.mp4" % (width, height, digits))
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "engine_build.make_video",
                "--output",
                str(path),
                "--width",
                str(width),
                "--height",
                str(height),
                "--digits",
                str(digits),
                "--frames-per-digit",
                "6",
            ],
            cwd=str(ROOT),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def probe(video, backend, boxes=0, realtime=False, mqtt_port=0, runs=3):
    """Median (by fps) of ``runs`` fresh-process runs of bench.probe."""
    return median_run([probe_once(video, backend, boxes, realtime, mqtt_port) for _ in range(runs)])


def median_run(results):
    """The run with the median fps, with every run's fps beside it."""
    results = sorted(results, key=lambda r: r["fps"])
    median = dict(results[len(results) // 2])
    median["fps_runs"] = [r["fps"] for r in results]
    return median


def probe_once(video, backend, boxes=0, realtime=False, mqtt_port=0, sources=1):
    command = [
        sys.executable,
        "-m",
        "bench.probe",
        "--video",
        str(video),
        "--backend",
        backend,
        "--boxes",
        str(boxes),
    ]
    if realtime:
        command.append("--realtime")
    if sources > 1:
        command += ["--sources", str(sources)]
    if mqtt_port:
        command += ["--mqtt-port", str(mqtt_port)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.monotonic()
    output = subprocess.run(command, cwd=str(ROOT), capture_output=True, text=True, env=env, timeout=600)
    if output.returncode != 0:
        raise RuntimeError("probe failed: %s" % output.stderr[-2000:])
    result = json.loads(output.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.monotonic() - started, 2)
    return result


def bench_pipeline(digits, backends):
    rows = []
    small, large = ensure_video(640, 480, digits), ensure_video(1280, 720, digits)
    for backend in backends:
        for video in (small, large):
            for boxes in (0, 8):
                print("  pipeline %s %s rois=%d" % (backend, video.name, max(boxes, 1)), flush=True)
                rows.append(dict(probe(video, backend, boxes), kind="unpaced"))
    return rows


def bench_paced(digits, backends):
    """30 fps from a file with publishing to a real Mosquitto: frame-to-publish latency."""
    from tools.broker import Broker, Subscriber, mosquitto_binary

    if mosquitto_binary() is None:
        print("  (no mosquitto: paced latency skipped)")
        return []
    rows = []
    video = ensure_video(640, 480, digits)
    with tempfile.TemporaryDirectory() as workdir:
        broker = Broker(workdir).start()
        try:
            for backend in backends:
                print("  paced 30 fps %s with Mosquitto" % backend, flush=True)
                subscriber = Subscriber(broker.port, "digitd/bench/prediction").start()
                result = probe(video, backend, 0, realtime=True, mqtt_port=broker.port, runs=1)
                subscriber.wait_for(lambda s, n=result["frames"]: len(s.on("prediction")) >= n, timeout=10)
                result["received"] = len(subscriber.on("prediction"))
                subscriber.stop()
                rows.append(dict(result, kind="paced 30 fps + MQTT"))
        finally:
            broker.stop()
    return rows


def bench_growth(digits):
    rows = []
    video = ensure_video(640, 480, digits)
    for boxes in (1, 4, 16, 64):
        print("  growth rois=%d" % boxes, flush=True)
        rows.append(dict(probe(video, "onnxruntime", boxes if boxes > 1 else 0), kind="rois"))
    for width, height in ((320, 240), (640, 480), (1280, 720), (1920, 1080)):
        print("  growth frame %dx%d" % (width, height), flush=True)
        rows.append(dict(probe(ensure_video(width, height, digits), "onnxruntime", 0), kind="frame size"))
    return rows


def bench_sources(digits, counts=(1, 2, 4), runs=3):
    """Several cameras in one pipeline (each the same video, as fast as it goes): CPU ms per
    frame and mean batch. Runs are interleaved (1, 2, 4, 1, 2, 4, ...) so a busy moment of
    the machine does not favour one count; the median run of each is reported."""
    video = ensure_video(640, 480, digits)
    results = dict((count, []) for count in counts)
    for run in range(runs):
        for count in counts:
            print("  sources=%d (run %d of %d)" % (count, run + 1, runs), flush=True)
            results[count].append(probe_once(video, "onnxruntime", sources=count))
    rows = []
    for count in counts:
        row = dict(median_run(results[count]), kind="sources")
        row["cpu_ms_per_frame_runs"] = sorted(r["cpu_ms_per_frame"] for r in results[count])
        row["cpu_ms_per_frame"] = row["cpu_ms_per_frame_runs"][len(results[count]) // 2]  # its own median
        rows.append(row)
    return rows


# -- report -----------------------------------------------------------------------------------
def plots(report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for name in sorted({r["runtime"] for r in report["classifier"]}):
        rows = sorted((r for r in report["classifier"] if r["runtime"] == name), key=lambda r: r["batch"])
        axis.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("batch size")
    axis.set_ylabel("images / s (median call)")
    axis.set_title("classifier throughput on this host")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(str(RESULTS / "classifier.png"), dpi=100)
    plt.close(figure)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rois = [r for r in report["growth"] if r["kind"] == "rois"]
    sizes = [r for r in report["growth"] if r["kind"] == "frame size"]
    left.plot([r["rois"] for r in rois], [r["fps"] for r in rois], marker="o", label="frames / s")
    left.plot([r["rois"] for r in rois], [r["rois"] * r["fps"] for r in rois], marker="s", label="crops / s")
    left.set_xscale("log", base=2)
    left.set_xlabel("ROIs per frame (640x480, onnxruntime)")
    left.set_ylabel("per second")
    left.legend()
    left.grid(True, alpha=0.3)
    pixels = [r["frame_size"][0] * r["frame_size"][1] / 1e6 for r in sizes]
    right.plot(pixels, [r["fps"] for r in sizes], marker="o", label="frames / s")
    twin = right.twinx()
    twin.plot(
        pixels, [r["cpu_ms_per_frame"] for r in sizes], marker="s", color="tab:red", label="CPU ms / frame"
    )
    right.set_xlabel("megapixels per frame (centre ROI, onnxruntime)")
    right.set_ylabel("frames / s")
    twin.set_ylabel("CPU ms / frame", color="tab:red")
    right.grid(True, alpha=0.3)
    figure.suptitle("pipeline cost growth (unpaced file)")
    figure.tight_layout()
    figure.savefig(str(RESULTS / "pipeline_growth.png"), dpi=100)
    plt.close(figure)


def markdown(report):
    lines = [
        "# digitd benchmark",
        "",
        "Host: %s, %d cores, Python %s. Command: `%s`."
        % (report["host"]["machine"], report["host"]["cores"], report["host"]["python"], report["command"]),
        "",
    ]
    lines += [
        "## Classifier (median of interleaved calls, %d threads)" % report["threads"],
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
        "## Physical limit",
        "",
        "Model: %.2f MFLOPs per image. CPU peak (float32 matmul, all cores): %.1f GFLOPS."
        % (limit["model_mflops"], limit["cpu_peak_gflops"]),
        "Best measured: %s at batch %d, %.0f images/s = %.1f GFLOPS = %.0f %% of peak; the peak allows "
        "at most %.0f images/s."
        % (
            limit["best_runtime"],
            limit["best_batch"],
            limit["best_images_per_s"],
            limit["achieved_gflops"],
            limit["percent_of_peak"],
            limit["peak_images_per_s"],
        ),
        "",
    ]
    lines += [
        "## Pipeline",
        "",
        "| kind | backend | frame | ROIs | fps | CPU ms/frame | p50 ms | p99 ms | dropped | peak RSS MB | start to first prediction s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["pipeline"] + report["paced"] + report["growth"]:
        lines.append(
            "| %s | %s | %dx%d | %d | %.1f | %.2f | %.2f | %.2f | %d | %.0f | %.2f |"
            % (
                r["kind"],
                r["backend"],
                r["frame_size"][0],
                r["frame_size"][1],
                r["rois"],
                r["fps"],
                r["cpu_ms_per_frame"],
                r["latency_p50_ms"],
                r["latency_p99_ms"],
                r["dropped"],
                r["peak_rss_mb"],
                r["startup_to_first_prediction_s"],
            )
        )
    if report.get("modes"):
        from bench import modes

        lines += [
            "",
            "## ROI modes (the daemon's reader in one process, interleaved)",
            "",
            modes.markdown(report["modes"]),
        ]
    sources = report.get("sources", [])
    if sources:
        single = sources[0]["cpu_ms_per_frame"]
        lines += [
            "",
            "## Several cameras, one pipeline (640x480, centre ROI, ONNX Runtime, interleaved runs)",
            "",
            "| cameras | frames | fps (all cameras) | CPU ms/frame (median; runs) | vs one camera | mean batch |",
            "| ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for r in sources:
            lines.append(
                "| %d | %d | %.1f | %.2f (%s) | %.2f | %.2f |"
                % (
                    r["sources"],
                    r["frames"],
                    r["fps"],
                    r["cpu_ms_per_frame"],
                    ", ".join("%.2f" % v for v in r["cpu_ms_per_frame_runs"]),
                    r["cpu_ms_per_frame"] / single,
                    r["mean_batch"],
                )
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        lines.append("| %s | %s | %s |" % (t["target"], t["measured"], "yes" if t["met"] else "**no**"))
    lines += ["", "![classifier](classifier.png)", "", "![pipeline growth](pipeline_growth.png)", ""]
    return "\n".join(lines)


def targets(report):
    def classifier(name, batch):
        return next((r for r in report["classifier"] if r["runtime"] == name and r["batch"] == batch), None)

    def pipeline(backend, kind="unpaced", size=(640, 480), rois=1):
        return next(
            (
                r
                for r in report["pipeline"] + report["paced"]
                if r["backend"].startswith(backend)
                and r["kind"] == kind
                and tuple(r["frame_size"]) == size
                and r["rois"] == rois
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
        row = pipeline(backend)
        if row:
            out.append(
                {
                    "target": "pipeline >= %d fps unpaced, %s, centre ROI, 640x480" % (goal, backend),
                    "measured": "%.1f fps" % row["fps"],
                    "met": row["fps"] >= goal,
                }
            )
    for row in report["paced"]:
        out.append(
            {
                "target": "p99 frame-to-publish <= 20 ms at 30 fps (%s)" % row["backend"],
                "measured": "%.2f ms" % row["latency_p99_ms"],
                "met": row["latency_p99_ms"] <= 20,
            }
        )
    for backend, limit in (("onnxruntime", 200), ("tensorflow", 1024)):
        row = pipeline(backend)
        if row:
            out.append(
                {
                    "target": "RSS <= %d MB with %s" % (limit, backend),
                    "measured": "%.0f MB" % row["peak_rss_mb"],
                    "met": row["peak_rss_mb"] <= limit,
                }
            )
    row = pipeline("onnxruntime")
    if row:
        out.append(
            {
                "target": "start-up to first prediction <= 3 s with ONNX Runtime",
                "measured": "%.2f s" % row["startup_to_first_prediction_s"],
                "met": row["startup_to_first_prediction_s"] <= 3,
            }
        )
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="digitd benchmarks")
    parser.add_argument("--full", action="store_true", help="more repetitions and longer videos")
    parser.add_argument(
        "--threads", type=int, default=2, help="threads per runtime in the classifier benchmark"
    )
    return parser.parse_args(argv)


def main(args):
    """Run everything, print JSON and the Markdown table, write files under bench/results/."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    RESULTS.mkdir(parents=True, exist_ok=True)
    repetitions, digits = (200, 100) if args.full else (40, 40)
    batches = [1, 8, 32, 64, 128]
    backends = ["onnxruntime", "tensorflow"]
    started = time.time()
    print("classifier: %d interleaved repetitions" % repetitions, flush=True)
    classifier = bench_classifier(batches, repetitions, args.threads)
    peak = cpu_peak_gflops()
    from daemon import model_meta

    mflops = model_meta.read(MODELS / "digits.keras")["flops_per_image"] / 1e6
    best = max(classifier, key=lambda r: r["images_per_s"])
    achieved = best["images_per_s"] * mflops / 1e3
    report = {
        "command": "make bench" + (" BENCH_ARGS=--full" if args.full else ""),
        "host": {
            "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "threads": args.threads,
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
            "jetson_nano_estimate": {
                "fp16_peak_gflops": NANO_FP16_PEAK_GFLOPS,
                "upper_bound_images_per_s": round(NANO_FP16_PEAK_GFLOPS * 1e3 / mflops),
                "at_25_percent_efficiency_images_per_s": round(0.25 * NANO_FP16_PEAK_GFLOPS * 1e3 / mflops),
                "note": "estimate from FLOPs, not a measurement",
            },
        },
    }
    print("pipeline (a fresh process per configuration)", flush=True)
    report["pipeline"] = bench_pipeline(digits, backends)
    report["paced"] = bench_paced(digits, backends)
    report["growth"] = bench_growth(digits)
    report["sources"] = bench_sources(digits)
    from bench import modes

    print("ROI modes: CPU ms per frame, interleaved, every ROI a digit", flush=True)
    report["modes"] = modes.measure(120 if args.full else 60)
    report["targets"] = targets(report)
    report["seconds"] = round(time.time() - started, 1)
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / "bench.md").write_text(text)
    plots(report)
    print(json.dumps({"targets": report["targets"], "physical_limit": report["physical_limit"]}, indent=1))
    print(text)
    print(
        "wrote %s/bench.json, bench.md, classifier.png, pipeline_growth.png in %.0f s"
        % (RESULTS, report["seconds"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
