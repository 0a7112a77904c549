"""``make soak``: the daemon at 30 fps from a looped file against Mosquitto for N minutes.

    python -m tools.soak --minutes 10 [--backend onnxruntime] [--output bench/results/soak]

Samples the daemon's RSS every second and collects every prediction; reports RSS at
the end of warm-up and at the end, dropped frames, lost messages and latency p99 as
JSON, and a PNG plot. Exit status 1 when a goal is missed (RSS growth >= 5 MB after
warm-up, dropped frames, lost predictions).
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from tools.broker import Broker, Subscriber

ROOT = Path(__file__).resolve().parent.parent
RSS_GROWTH_LIMIT_MB = 5.0


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run(minutes, backend, output, warmup_fraction=0.25, video=None):
    """Run the soak; returns the report dict (also written to ``output``.json/.png)."""
    duration = minutes * 60.0
    workdir = Path(tempfile.mkdtemp(prefix="digitd-soak-"))
    broker = Broker(workdir).start()
    config = {
        "device_id": "soak",
        "log_level": "WARNING",
        "stats_interval_s": 5,
        "source": {
            "type": "file",
            "path": str(video or ROOT / "samples" / "demo.mp4"),
            "loop": True,
            "realtime": True,
        },
        "backend": {"type": backend},
        "http": {"enabled": False},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
    }
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subscriber = Subscriber(broker.port, "digitd/soak/#").start()
    log_file = open(str(workdir / "daemon.log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "-c", str(config_path)], cwd=str(ROOT), stderr=log_file
    )
    started = time.monotonic()
    samples = []
    try:
        while time.monotonic() - started < duration:
            if process.poll() is not None:
                raise RuntimeError("daemon exited early: %s" % (workdir / "daemon.log").read_text())
            samples.append((time.monotonic() - started, rss_mb(process.pid)))
            time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
        log_file.close()
    subscriber.wait_for(lambda s: s.on("availability") and s.on("availability")[-1][1] == b"offline", 10)
    subscriber.stop()
    broker.stop()
    predictions = subscriber.payloads("prediction")
    stats = subscriber.payloads("stats")
    frames = [p["frame"] for p in predictions]
    latencies = [p["latency_ms"] for p in predictions]
    warm = [rss for t, rss in samples if t >= warmup_fraction * duration]
    report = {
        "minutes": minutes,
        "backend": predictions[0]["backend"] if predictions else backend,
        "predictions": len(predictions),
        "fps": round(len(predictions) / duration, 2),
        "lost_predictions": (max(frames) - len(set(frames)) - (stats[-1]["dropped_frames"] if stats else 0))
        if frames
        else None,
        "dropped_frames": stats[-1]["dropped_frames"] if stats else None,
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "rss_start_mb": round(samples[0][1], 1),
        "rss_after_warmup_mb": round(warm[0], 1),
        "rss_end_mb": round(samples[-1][1], 1),
        "rss_growth_after_warmup_mb": round(samples[-1][1] - warm[0], 2),
        "rss_max_mb": round(max(r for _, r in samples), 1),
        "rss_samples": [[round(t, 1), round(r, 2)] for t, r in samples],
    }
    report["goals_met"] = (
        report["rss_growth_after_warmup_mb"] < RSS_GROWTH_LIMIT_MB
        and report["dropped_frames"] == 0
        and report["lost_predictions"] == 0
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Path(str(output) + ".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, latencies, Path(str(output) + ".png"), warmup_fraction * duration)
    return report


def plot(report, latencies, path, warmup_s):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6))
    times = [t for t, _ in report["rss_samples"]]
    top.plot(times, [r for _, r in report["rss_samples"]])
    top.axvline(warmup_s, color="grey", linestyle="--", label="end of warm-up")
    top.set_ylabel("RSS MB")
    top.set_title(
        "soak: %s, %.0f min at 30 fps, RSS %+.2f MB after warm-up, %s dropped frames"
        % (
            report["backend"],
            report["minutes"],
            report["rss_growth_after_warmup_mb"],
            report["dropped_frames"],
        )
    )
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(latencies, linewidth=0.5)
    bottom.set_xlabel("prediction")
    bottom.set_ylabel("capture to publish ms")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "soak"))
    args = parser.parse_args(argv)
    report = run(args.minutes, args.backend, args.output)
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=1))
    print("wrote %s.json and %s.png" % (args.output, args.output))
    return 0 if report["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
