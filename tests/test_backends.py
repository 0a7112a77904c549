"""CPU backends on the shipped model: agreement, lazy imports, auto selection."""

import subprocess
import sys

import numpy as np
import pytest

from daemon import backends, config
from daemon.backends import BackendUnavailable
from daemon.preprocess import normalise_uint8
from tests.helpers import MODELS, ROOT


def backend_settings(**values):
    values.setdefault("onnx_model", str(MODELS / "digits.onnx"))
    values.setdefault("keras_model", str(MODELS / "digits.keras"))
    return config.from_dict({"source": {"type": "v4l2"}, "backend": values}).backend


@pytest.mark.slow
@pytest.mark.host  # TensorFlow
def test_onnxruntime_and_tensorflow_agree_on_mnist(mnist_test):
    images = normalise_uint8(mnist_test[0][:300])
    with backends.load_backend(backend_settings(type="onnxruntime")) as ort_backend:
        ort_probs = ort_backend.infer(images)
        assert ort_backend.name == "onnxruntime-fp32"
    with backends.load_backend(backend_settings(type="tensorflow")) as tf_backend:
        tf_probs = tf_backend.infer(images)
        partial = tf_backend.infer(images[:3])
        assert tf_backend.name == "tensorflow-fp32"
    assert ort_probs.shape == (300, 12)
    assert np.abs(ort_probs - tf_probs).max() < 1e-4
    assert np.allclose(partial, tf_probs[:3], atol=1e-5)
    assert (ort_probs.argmax(1) == mnist_test[1][:300]).mean() > 0.98


def test_infer_all_chunks_batches_larger_than_max_batch(mnist_test):
    images = normalise_uint8(mnist_test[0][:70])
    backend = backends.load_backend(backend_settings(type="onnxruntime"))
    backend.max_batch = 32
    assert np.allclose(backend.infer_all(images), backend.infer(images), atol=1e-6)


def test_auto_picks_onnxruntime_here_and_says_why(caplog):
    caplog.set_level("INFO")
    backend = backends.load_backend(backend_settings(type="auto"))
    assert backend.name == "onnxruntime-fp32"
    assert "TensorRT is not importable" in caplog.text


@pytest.mark.slow
@pytest.mark.host  # TensorFlow
def test_auto_falls_back_to_tensorflow_without_the_onnx_model(tmp_path):
    backend = backends.load_backend(backend_settings(type="auto", onnx_model=str(tmp_path / "none.onnx")))
    assert backend.name == "tensorflow-fp32"


def test_missing_model_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="does not exist"):
        backends.load_backend(backend_settings(type="onnxruntime", onnx_model=str(tmp_path / "x.onnx")))


def test_onnxruntime_backend_never_imports_tensorflow():
    code = (
        "import sys; from daemon import backends, config\n"
        "s = config.from_dict({'source': {'type': 'v4l2'}, 'backend': {'type': 'auto'}}).backend\n"
        "b = backends.load_backend(s); import numpy as np\n"
        "b.infer(np.zeros((2, 28, 28, 1), np.float32))\n"
        "print('tensorflow' in sys.modules, 'tensorrt' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().split() == ["False", "False"]
