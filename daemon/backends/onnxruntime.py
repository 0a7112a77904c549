"""ONNX Runtime on the CPU: the fast CPU backend."""

import logging

import numpy as np

from daemon import model_meta
from daemon.backends.base import Backend, BackendUnavailable, import_runtime, require_file

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    """Runs ``backend.onnx_model`` with a fixed number of intra-op threads."""

    def __init__(self, model_path, threads=1):
        self.model_path = str(model_path)
        self.threads = threads
        self.session = None
        self.input_name = None
        self.nchw = True
        self.name = "onnxruntime"

    def load(self):
        ort = import_runtime("onnxruntime", "onnxruntime is not installed")
        require_file(self.model_path, "ONNX model")
        try:
            meta = model_meta.read(self.model_path)
        except model_meta.ModelMetadataError as exc:
            log.warning("%s; assuming NCHW float32 input", exc)
            meta = {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would spin between frames and steal the cores that
        # capture and preprocessing need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.model_path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BackendUnavailable("ONNX Runtime cannot load %s: %s" % (self.model_path, exc)) from exc
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.nchw = meta.get("input", {}).get("layout", "NCHW") == "NCHW"
        self.name = "onnxruntime-%s" % meta.get("precision", "fp32")
        log.info(
            "ONNX Runtime %s: %s, input %s %s, %d thread(s)",
            ort.__version__,
            self.model_path,
            self.input_name,
            model_input.shape,
            self.threads,
        )
        return self

    def infer(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.nchw:
            batch = batch.reshape(len(batch), 1, batch.shape[1], batch.shape[2])
        return self.session.run(None, {self.input_name: batch})[0]

    def close(self):
        self.session = None
