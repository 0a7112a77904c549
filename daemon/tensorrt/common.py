"""What the TensorRT backend and the engine build (daemon/tensorrt/build.py) share (runs on the Jetson, Python 3.6).

- a TensorRT logger that writes into Python logging,
- the identity of the GPU and runtime an engine is built for,
- the engine sidecar check (TensorRT version, GPU, ONNX hash).
"""

import logging
import os

from daemon import model_meta

log = logging.getLogger(__name__)

JETPACK_HINT = (
    "TensorRT not found. Build and run the engine on the Jetson: JetPack 4.6.1+ provides it "
    "(apt packages python3-libnvinfer and python3-libnvinfer-dev, plus cuda-toolkit for pycuda); "
    "use a virtualenv created with --system-site-packages so Python sees them."
)


class EngineMismatch(Exception):
    """An engine's sidecar does not match this runtime, GPU or ONNX file."""


def make_trt_logger(trt, name="tensorrt"):
    """A ``trt.ILogger`` that forwards every TensorRT message to Python logging."""
    target = logging.getLogger(name)
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.INFO,
        severity.VERBOSE: logging.DEBUG,
    }

    class PythonLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level, message):
            target.log(levels.get(level, logging.INFO), "%s", message)

    return PythonLogger()


def trt_major(trt):
    return int(trt.__version__.split(".")[0])


def gpu_identity(cuda, device_index=0):
    """{'gpu_name', 'compute_capability'} of a CUDA device (needs cuda.init())."""
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    return {"gpu_name": device.name(), "compute_capability": "%d.%d" % (major, minor)}


def engine_sidecar(
    trt,
    cuda,
    onnx_path,
    precision,
    profile,
    build_seconds,
    device_index=0,
    build_path=None,
    network_onnx=None,
):
    """Metadata written next to an engine. ``onnx_*`` name the model the daemon is configured
    with; ``network_onnx`` the file the network was parsed from when that differs (the FP16
    ONNX of a strongly typed build); ``build_path`` how precision was chosen."""
    meta = {
        "format": "tensorrt-engine",
        "tensorrt_version": trt.__version__,
        "precision": precision,
        "profile": {"min": profile[0], "opt": profile[1], "max": profile[2]},
        "max_batch": profile[2],
        "onnx_file": os.path.basename(str(onnx_path)),
        "onnx_sha256": model_meta.sha256_of(onnx_path),
        "build_seconds": round(build_seconds, 1),
    }
    if build_path:
        meta["build_path"] = build_path
    if network_onnx and os.path.abspath(str(network_onnx)) != os.path.abspath(str(onnx_path)):
        meta["network_onnx"] = {
            "file": os.path.basename(str(network_onnx)),
            "sha256": model_meta.sha256_of(network_onnx),
        }
    meta.update(gpu_identity(cuda, device_index))
    try:
        meta["onnx_metadata"] = model_meta.read(onnx_path)
    except model_meta.ModelMetadataError:
        pass
    return meta


def check_engine(meta, trt, cuda, onnx_path, device_index=0):
    """Raise EngineMismatch listing every difference between the sidecar and this machine."""
    problems = []
    if meta.get("tensorrt_version") != trt.__version__:
        problems.append(
            "built with TensorRT %s, this is TensorRT %s" % (meta.get("tensorrt_version"), trt.__version__)
        )
    here = gpu_identity(cuda, device_index)
    if (
        meta.get("gpu_name") != here["gpu_name"]
        or meta.get("compute_capability") != here["compute_capability"]
    ):
        problems.append(
            "built for GPU %r (sm %s), this GPU is %r (sm %s)"
            % (
                meta.get("gpu_name"),
                meta.get("compute_capability"),
                here["gpu_name"],
                here["compute_capability"],
            )
        )
    if onnx_path and os.path.isfile(str(onnx_path)):
        actual = model_meta.sha256_of(onnx_path)
        if meta.get("onnx_sha256") != actual:
            problems.append(
                "built from ONNX sha256 %s..., %s is %s..."
                % (str(meta.get("onnx_sha256"))[:12], onnx_path, actual[:12])
            )
    network = meta.get("network_onnx")
    if onnx_path and network:
        network_path = os.path.join(os.path.dirname(str(onnx_path)), network.get("file", ""))
        if os.path.isfile(network_path) and model_meta.sha256_of(network_path) != network.get("sha256"):
            problems.append("built from %s, which has changed since" % network_path)
    if problems:
        raise EngineMismatch("; ".join(problems))
