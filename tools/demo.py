"""``make demo``: the daemon on the bundled sample video, CPU backend, shipped model.

Starts a private Mosquitto on a free port when the binary exists (else uses the
broker in config.yaml), runs ``python -m daemon run`` and prints what an MQTT
subscriber receives, then how many readings matched the video's labels.
"""

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


def main():
    """Run the demo; returns the daemon's exit code."""
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
    config["mqtt"].update({"host": host, "port": port})
    config["stats_interval_s"] = 2
    config["http"]["port"] = 0  # any free port: the daemon logs the address of its debug page
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subscriber = Subscriber(port, "digitd/demo/#")
    subscriber.client.on_message = _printer(subscriber.client.on_message)
    subscriber.start()
    print("subscribed to digitd/demo/#; running the daemon on %s (30 fps)\n" % VIDEO.relative_to(ROOT))
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
            print(
                "prediction frame %4d  %-24s %6.1f ms  %s"
                % (body["frame"], rois, body["latency_ms"], body["backend"])
            )
        elif kind == "state":
            number = json.loads(message.payload.decode("utf-8"))["number"]
            print("state      -> number %s" % ("(no digit)" if number is None else number))
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
    predictions = subscriber.payloads("prediction")
    right = sum(1 for p in predictions if p["rois"][0]["digit"] == truth[p["frame"] - 1])
    print(
        "\nreceived %d predictions in %.1f s; %d of them (%.1f %%) match the video's labels"
        % (len(predictions), elapsed, right, 100.0 * right / max(1, len(predictions)))
    )


if __name__ == "__main__":
    sys.exit(main())
