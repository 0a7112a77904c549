"""``make demo``: the daemon on the bundled sample video, CPU backend, shipped model.

Starts a private Mosquitto on a free port when the binary exists (else uses the
broker in config.yaml), runs ``python -m daemon run`` and prints what an MQTT
subscriber receives, then how many readings matched the video's labels.
``make demo SOURCES=2`` (``--sources 2``) runs the video as two cameras in one daemon.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tools.broker import Broker, Subscriber, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "samples" / "demo.mp4"


def main(argv=None):
    """Run the demo; returns the daemon's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=1, help="cameras in one daemon, each the sample video")
    args = parser.parse_args(argv)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    workdir = Path(tempfile.mkdtemp(prefix="digitd-demo-"))
    broker = None
    if mosquitto_binary():
        broker = Broker(workdir).start()
        host, port = "127.0.0.1", broker.port
        print("started a private Mosquitto on 127.0.0.1:%d" % port)
    else:
        host, port = config["mqtt"]["host"], config["mqtt"]["port"]
        print("mosquitto not installed; using the broker in config.yaml: %s:%d" % (host, port))
    config["device_id"] = "demo"
    config["source"].update({"type": "file", "path": str(VIDEO), "realtime": True, "loop": False})
    if args.sources > 1:  # several cameras: each its own source settings and ROIs
        camera, roi = config.pop("source"), config.pop("roi")
        config["sources"] = [dict(camera, id="cam%d" % (n + 1), roi=roi) for n in range(args.sources)]
    config["mqtt"].update({"host": host, "port": port})
    config["stats_interval_s"] = 2
    config["http"]["port"] = 0  # any free port: the daemon logs the address of its debug page
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subscriber = Subscriber(port, "digitd/demo/#")
    subscriber.client.on_message = _printer(subscriber.client.on_message)
    subscriber.start()
    print(
        "subscribed to digitd/demo/#; running the daemon on %s (30 fps)%s\n"
        % (VIDEO.relative_to(ROOT), " as %d cameras" % args.sources if args.sources > 1 else "")
    )
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-m", "daemon", "run", "-c", str(config_path)], cwd=str(ROOT))
    time.sleep(0.5)
    subscriber.stop()
    if broker:
        broker.stop()
    _summary(subscriber, time.monotonic() - started)
    return process.returncode


def _printer(collect):
    def on_message(client, userdata, message):
        collect(client, userdata, message)
        kind = message.topic.rsplit("/", 1)[-1]
        if kind == "prediction":
            body = json.loads(message.payload.decode("utf-8"))
            rois = ", ".join(
                "%s=%s (%.2f)" % (r["id"], "-" if r["digit"] is None else r["digit"], r["confidence"])
                for r in body["rois"]
            )
            camera = "%s " % body["source"] if "source" in body else ""
            print(
                "prediction %sframe %4d  %-24s %6.1f ms  %s"
                % (camera, body["frame"], rois, body["latency_ms"], body["backend"])
            )
        elif kind == "state":
            body = json.loads(message.payload.decode("utf-8"))
            number = body["number"]
            camera = "%s " % body["source"] if "source" in body else ""
            print("state      %s-> number %s" % (camera, "(no digit)" if number is None else number))
        elif kind == "availability":
            print(
                "availability: %s%s"
                % (message.payload.decode("utf-8"), " (retained)" if message.retain else "")
            )
        elif kind == "stats":
            body = json.loads(message.payload.decode("utf-8"))
            print(
                "stats      fps in %.1f out %.1f, dropped %d, latency p50 %.1f ms p99 %.1f ms"
                % (
                    body["fps_in"],
                    body["fps_out"],
                    body["dropped_frames"],
                    body["latency_p50_ms"],
                    body["latency_p99_ms"],
                )
            )

    return on_message


def _summary(subscriber, elapsed):
    truth = json.loads(Path(str(VIDEO) + ".labels.json").read_text())["truth"]
    by_camera = {}
    for payload in subscriber.payloads("prediction"):
        by_camera.setdefault(payload.get("source"), []).append(payload)
    print()
    for camera, predictions in sorted(by_camera.items(), key=lambda item: str(item[0])):
        right = sum(1 for p in predictions if p["rois"][0]["digit"] == truth[p["frame"] - 1])
        print(
            "%sreceived %d predictions in %.1f s; %d of them (%.1f %%) match the video's labels"
            % (
                "" if camera is None else camera + ": ",
                len(predictions),
                elapsed,
                right,
                100.0 * right / max(1, len(predictions)),
            )
        )


if __name__ == "__main__":
    sys.exit(main())
