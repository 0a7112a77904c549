"""TensorFlow on the CPU: loads the .keras model and calls a compiled tf.function.

``model.predict`` costs ~50 ms per call in setup alone, so it is never used per frame.
"""

import logging
import os

import numpy as np

from daemon.backends.base import Backend, BackendUnavailable, import_runtime, require_file
from daemon.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)


class TensorFlowBackend(Backend):
    """Runs ``backend.keras_model`` through one traced tf.function with a dynamic batch."""

    name = "tensorflow-fp32"

    def __init__(self, model_path, threads=1):
        self.model_path = str(model_path)
        self.threads = threads
        self.model = None
        self._call = None
        self._to_tensor = None

    def load(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        tf = import_runtime("tensorflow", "TensorFlow is not installed")
        require_file(self.model_path, "Keras model")
        try:
            tf.config.threading.set_intra_op_parallelism_threads(self.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            log.debug("TensorFlow threads already fixed in this process")
        try:
            self.model = tf.keras.models.load_model(self.model_path, compile=False)
        except (OSError, ValueError) as exc:
            raise BackendUnavailable("cannot load %s: %s" % (self.model_path, exc)) from exc
        model = self.model
        spec = tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 1), tf.float32)

        @tf.function(input_signature=[spec])
        def call(images):
            return model(images, training=False)

        # The concrete function skips tf.function's per-call signature matching (~0.6 ms here).
        self._call = call.get_concrete_function()
        self._to_tensor = tf.constant
        self._call(tf.zeros((1, INPUT_SIZE, INPUT_SIZE, 1), tf.float32))
        log.info("TensorFlow %s: %s, %d thread(s)", tf.__version__, self.model_path, self.threads)
        return self

    def infer(self, batch):
        return self._call(self._to_tensor(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def close(self):
        self.model = None
        self._call = None
