"""What this device offers the daemon: ``make jetson-check`` or ``python3 -m daemon.jetson_check``.

Prints L4T/JetPack, TensorRT, CUDA and pycuda (with the GPU), OpenCV and whether it has
GStreamer and the Jetson camera elements, ONNX Runtime, camera device nodes, and which
backend ``backend: auto`` picks with that config and why. Runs anywhere (Python 3.6+); on a
host it says what is missing. Exit status 0 when a backend loads, 69 when none does.
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import sys

EXIT_UNAVAILABLE = 69
# L4T release -> JetPack (NVIDIA's JetPack archive).
JETPACK = {
    "32.6": "4.6",
    "32.7": "4.6.1+",
    "35.1": "5.0.2",
    "35.2": "5.1",
    "35.3": "5.1.1",
    "35.4": "5.1.2",
    "35.5": "5.1.3",
    "35.6": "5.1.4",
    "36.2": "6.0 DP",
    "36.3": "6.0",
    "36.4": "6.1/6.2",
}


def l4t_release(path="/etc/nv_tegra_release"):
    """'R32.7.1' from '# R32 (release), REVISION: 7.1, ...', or None off a Jetson."""
    try:
        with open(path) as handle:
            first = handle.readline()
    except OSError:
        return None
    found = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", first)
    return "R%s.%s" % found.groups() if found else first.strip()


def cuda_version():
    for path in ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"):
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        if path.endswith(".json"):
            return json.loads(text).get("cuda", {}).get("version", "?")
        return text.strip().replace("CUDA Version ", "")
    return None


def line(label, value):
    print("%-22s %s" % (label + ":", value))


def check_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        return "MISSING (%s); JetPack's python3-libnvinfer, in a venv made with --system-site-packages" % exc
    return tensorrt.__version__


def check_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        return (
            "MISSING (%s); export PATH=/usr/local/cuda/bin:$PATH; pip install --no-build-isolation pycuda"
            % exc
        )
    try:
        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return "ok, GPU %s (sm %d.%d), driver CUDA %s" % (
            device.name(),
            major,
            minor,
            cuda.get_driver_version(),
        )
    except cuda.Error as exc:
        return "imports, but no usable GPU: %s" % exc


def check_opencv():
    try:
        import cv2
    except ImportError as exc:
        return "MISSING (%s); on L4T R32: apt-get install libopencv-python (NVIDIA's, with GStreamer)" % exc
    from daemon.sources.capture import JETSON_ELEMENTS, gstreamer_element_exists, has_gstreamer

    text = "%s from %s" % (cv2.__version__, cv2.__file__)
    if not has_gstreamer():
        return text + "; NO GStreamer (a PyPI wheel? CSI and RTSP pipelines need JetPack's OpenCV)"
    elements = []
    for name in JETSON_ELEMENTS:
        found = gstreamer_element_exists(name)
        elements.append("%s %s" % (name, {True: "found", False: "MISSING", None: "unknown"}[found]))
    return text + "; GStreamer yes; " + ", ".join(elements)


def check_onnxruntime():
    if importlib.util.find_spec("onnxruntime") is None:
        return "MISSING: no CPU fallback (pip install onnxruntime==1.10.0 on Python 3.6)"
    import onnxruntime

    return onnxruntime.__version__


def cameras():
    nodes = sorted(glob.glob("/dev/video*"))
    argus = os.path.exists("/tmp/argus_socket") or os.path.exists("/usr/sbin/nvargus-daemon")
    return "%s; nvargus-daemon %s" % (
        ", ".join(nodes) or "no /dev/video*",
        "present" if argus else "not found",
    )


def backend_choice(config_path):
    """Try what ``backend: auto`` tries, in its order, and say why each was or was not taken."""
    from daemon import backends, config

    settings = config.load(config_path).backend if config_path else config.from_dict({}).backend
    for kind, skipped in backends._auto_candidates(settings):
        if kind is None:
            line("  skipped", skipped)
            continue
        if kind == "tensorflow":
            available = importlib.util.find_spec("tensorflow") is not None
            line(
                "  last resort",
                "TensorFlow (%s; not loaded here)" % ("installed" if available else "MISSING"),
            )
            return available
        try:
            backend = backends._instantiate(kind, settings, 32).load()
        except backends.BackendUnavailable as exc:
            line("  failed", "%s: %s" % (kind, exc))
            continue
        line("  picks", backend.name)
        backend.close()
        return True
    return False


def main(args):
    print("digitd on %s, Python %s" % (os.uname().machine, sys.version.split()[0]))
    release = l4t_release()
    if release:
        short = ".".join(release[1:].split(".")[:2])
        line("L4T", "%s (JetPack %s)" % (release, JETPACK.get(short, "?")))
    else:
        line("L4T", "not a Jetson (no /etc/nv_tegra_release)")
    line("CUDA", cuda_version() or "not found in /usr/local/cuda")
    line("TensorRT", check_tensorrt())
    line("pycuda", check_pycuda())
    line("OpenCV", check_opencv())
    line("ONNX Runtime", check_onnxruntime())
    line("cameras", cameras())
    print("backend: auto with %s:" % (args.config or "the default settings"))
    return 0 if backend_choice(args.config) else EXIT_UNAVAILABLE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="What this device offers the daemon.")
    default = next((p for p in ("/etc/digitd/config.yaml", "config.yaml") if os.path.isfile(p)), None)
    parser.add_argument(
        "-c", "--config", default=default, help="default: /etc/digitd/config.yaml or ./config.yaml"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
