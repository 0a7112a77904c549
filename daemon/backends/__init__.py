"""Backend registry. Runtimes are imported only when their backend is created.

backend = load_backend(config.backend)   # 'auto' tries TensorRT, then ONNX Runtime, then TF
"""

import importlib
import importlib.util
import logging
import os

from daemon.backends.base import Backend, BackendUnavailable  # noqa: F401

log = logging.getLogger(__name__)

_REGISTRY = {
    "tensorrt": ("daemon.tensorrt.backend", "TensorRTBackend"),
    "onnxruntime": ("daemon.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorflow": ("daemon.backends.tensorflow", "TensorFlowBackend"),
}


def _module_available(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _instantiate(kind, settings, max_batch):
    module_name, class_name = _REGISTRY[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    if kind == "tensorrt":
        return cls(
            settings.engine,
            onnx_path=settings.onnx_model,
            max_batch=max_batch,
            rebuild_stale=settings.rebuild_stale,
            zero_copy=settings.zero_copy,
        )
    if kind == "onnxruntime":
        return cls(settings.onnx_model, threads=settings.threads, precision=settings.onnx_precision)
    return cls(settings.keras_model, threads=settings.threads)


def _auto_candidates(settings):
    """(kind, reason-if-skipped) in preference order for ``type: auto``."""
    if not _module_available("tensorrt"):
        yield None, "TensorRT is not importable"
    elif not os.path.isfile(settings.engine):
        yield None, "engine %s does not exist (make build-engine)" % settings.engine
    else:
        yield "tensorrt", ""
    if not _module_available("onnxruntime"):
        yield None, "onnxruntime is not installed"
    elif not os.path.isfile(settings.onnx_model):
        yield None, "ONNX model %s does not exist" % settings.onnx_model
    else:
        yield "onnxruntime", ""
    yield "tensorflow", ""


def load_backend(settings, max_batch=32):
    """Create and load the configured backend; ``auto`` falls back in order and logs why."""
    if settings.type != "auto":
        return _instantiate(settings.type, settings, max_batch).load()
    reasons = []
    for kind, skipped in _auto_candidates(settings):
        if kind is None:
            reasons.append(skipped)
            continue
        try:
            backend = _instantiate(kind, settings, max_batch).load()
        except BackendUnavailable as exc:
            reasons.append("%s: %s" % (kind, exc))
            continue
        log.info("backend auto -> %s%s", backend.name, " (%s)" % "; ".join(reasons) if reasons else "")
        return backend
    raise BackendUnavailable("no backend could be loaded: %s" % "; ".join(reasons))
