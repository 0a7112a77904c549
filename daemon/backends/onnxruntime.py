"""ONNX Runtime on the CPU: the fast CPU backend."""

import logging
import os

import numpy as np

from daemon import model_meta
from daemon.backends.base import Backend, BackendUnavailable, import_runtime, require_file

log = logging.getLogger(__name__)

# With ``precision: int8`` a row whose likeliest class the int8 model gives less than this is
# run again in float32 and the float32 answer is kept: every MNIST test digit and held-out
# meter digit on which the two models disagree had at most 0.57 there, so the readings are
# the float model's, at about 1 to 4 % of the rows run twice.
RECHECK_BELOW = 0.95


class OnnxRuntimeBackend(Backend):
    """Runs ``backend.onnx_model`` with a fixed number of intra-op threads; with ``precision``
    ``int8``, its int8 copy (``make quantize``) first, unsure rows again in float32."""

    def __init__(self, model_path, threads=1, precision="fp32"):
        self.model_path = str(model_path)
        self.threads = threads
        self.precision = precision
        self.session = None
        self.int8_session = None
        self.input_name = None
        self.nchw = True
        self.transition_class = None
        self.name = "onnxruntime"
        self.rows = 0
        self.rechecked = 0

    def _session(self, ort, path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would spin between frames and steal the cores that
        # capture and preprocessing need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BackendUnavailable("ONNX Runtime cannot load %s: %s" % (path, exc)) from exc

    def _int8_copy(self):
        """The path of the model's int8 copy when it exists and was made from this very model
        file, else None (with the reason logged)."""
        path = model_meta.int8_model_path(self.model_path)
        if not os.path.isfile(path):
            log.warning("no int8 copy %s (make quantize): running %s in float32", path, self.model_path)
            return None
        try:
            source = model_meta.read(path).get("source_model_sha256")
        except model_meta.ModelMetadataError as exc:
            log.warning("%s: running %s in float32", exc, self.model_path)
            return None
        if source != model_meta.sha256_of(self.model_path):
            log.warning(
                "%s was made from another version of %s (make quantize): running it in float32",
                path,
                self.model_path,
            )
            return None
        return path

    def load(self):
        ort = import_runtime("onnxruntime", "onnxruntime is not installed")
        require_file(self.model_path, "ONNX model")
        try:
            meta = model_meta.read(self.model_path)
        except model_meta.ModelMetadataError as exc:
            log.warning("%s; assuming NCHW float32 input", exc)
            meta = {}
        self.session = self._session(ort, self.model_path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.nchw = meta.get("input", {}).get("layout", "NCHW") == "NCHW"
        if len(meta.get("labels", ())) > model_meta.TRANSITION_CLASS:
            self.transition_class = model_meta.TRANSITION_CLASS
        self.name = "onnxruntime-%s" % meta.get("precision", "fp32")
        int8_path = self._int8_copy() if self.precision == "int8" else None
        if int8_path is not None:
            self.int8_session = self._session(ort, int8_path)
            self.name = "onnxruntime-int8"
        log.info(
            "ONNX Runtime %s: %s%s, input %s %s, %d thread(s)",
            ort.__version__,
            int8_path or self.model_path,
            " (unsure rows again in float32)" if int8_path else "",
            self.input_name,
            model_input.shape,
            self.threads,
        )
        return self

    def _model_input(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.nchw:
            batch = batch.reshape(len(batch), 1, batch.shape[1], batch.shape[2])
        return batch

    def infer_exact(self, batch):
        """The float32 model alone, in chunks of at most ``max_batch``."""
        if self.int8_session is None:
            return self.infer_all(batch)
        return self._in_chunks(self._run_float, batch)

    def _run_float(self, batch):
        return self.session.run(None, {self.input_name: self._model_input(batch)})[0]

    def infer(self, batch):
        batch = self._model_input(batch)
        if self.int8_session is None:
            return self.session.run(None, {self.input_name: batch})[0]
        probabilities = self.int8_session.run(None, {self.input_name: batch})[0]
        # a drum in transition is recomputed too: for a box that cannot roll the transition
        # class is taken out and the small rest decides (postprocess.for_style)
        unsure = probabilities.max(axis=1) < RECHECK_BELOW
        if self.transition_class is not None:
            unsure |= probabilities.argmax(axis=1) == self.transition_class
        self.rows += len(batch)
        if unsure.any():
            self.rechecked += int(unsure.sum())
            probabilities[unsure] = self.session.run(None, {self.input_name: batch[unsure]})[0]
        return probabilities

    def close(self):
        if self.int8_session is not None and self.rows:
            log.info("int8: %d of %d rows run again in float32", self.rechecked, self.rows)
        self.session = None
        self.int8_session = None
