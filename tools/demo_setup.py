"""``make demo-setup``: the daemon on the sample video with its setup page, to try the page.

The video loops in real time (like a camera) and the daemon serves
http://127.0.0.1:8080/setup. Its config is a copy of config.yaml in a working folder
(comments and all), so what the page saves changes that copy, never the repo's file.
A private Mosquitto is started when installed; Ctrl-C stops everything.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

from tools.broker import Broker, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "samples" / "demo.mp4"


def working_config(folder, port, broker_port):
    """A copy of config.yaml (comments kept) set to loop the sample video in real time."""
    handler = YAML()
    config = handler.load((ROOT / "config.yaml").read_text())
    config["device_id"] = "demo"
    config["source"].update({"type": "file", "path": str(VIDEO), "realtime": True, "loop": True})
    config["http"]["port"] = port
    config["backend"]["onnx_model"] = str(ROOT / "models" / "digits.onnx")
    if broker_port:
        config["mqtt"].update({"host": "127.0.0.1", "port": broker_port})
    else:
        config["mqtt"]["enabled"] = False
    path = folder / "demo-setup.yaml"
    with open(str(path), "w") as handle:
        handler.dump(config, handle)
    return path


def main(argv=None):
    """Run the daemon until Ctrl-C; returns its exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="HTTP port of the setup page")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="digitd-setup-"))
    broker = Broker(folder).start() if mosquitto_binary() else None
    path = working_config(folder, args.port, broker.port if broker else None)
    print("config: %s" % path)
    print("setup page: http://127.0.0.1:%d/setup   (Ctrl-C to stop)" % args.port)
    if broker:
        print("MQTT: mosquitto_sub -p %d -t 'digitd/demo/#' -v" % broker.port)
    process = subprocess.Popen([sys.executable, "-m", "daemon", "run", "-c", str(path)], cwd=str(ROOT))
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = process.wait()
    finally:
        if broker:
            broker.stop()
    print("\nthe saved config: %s" % path)
    if (folder / "demo-setup.yaml.bak").exists():
        subprocess.run(["diff", "-u", str(folder / "demo-setup.yaml.bak"), str(path)])
    return code


if __name__ == "__main__":
    sys.exit(main())
