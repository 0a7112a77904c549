"""CPU backends on the shipped model: agreement, lazy imports, auto selection."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from daemon import backends, config
from daemon.backends import BackendUnavailable
from daemon.backends import onnxruntime as onnxruntime_backend
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
    with backends.load_backend(backend_settings(type="onnxruntime", onnx_precision="fp32")) as ort_backend:
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
    assert backend.name == "onnxruntime-int8"
    assert "TensorRT is not importable" in caplog.text


@pytest.mark.slow
@pytest.mark.host  # TensorFlow
def test_auto_falls_back_to_tensorflow_without_the_onnx_model(tmp_path):
    backend = backends.load_backend(backend_settings(type="auto", onnx_model=str(tmp_path / "none.onnx")))
    assert backend.name == "tensorflow-fp32"


def copy_model(source, folder, with_int8=True):
    """models/<source>.onnx (and its int8 copy) with their sidecars in ``folder``."""
    for name in [source + ".onnx"] + ([source + ".int8.onnx"] if with_int8 else []):
        for suffix in ("", ".json"):
            shutil.copy(str(MODELS / (name + suffix)), str(folder / (name + suffix)))
    return folder / (source + ".onnx")


def test_int8_reads_as_the_float_model_at_a_fraction_of_the_work(mnist_test, tmp_path):
    """The default: the int8 copy answers, the rows it is unsure of are run again in float32,
    so the readings are the float model's (its probabilities differ by quantisation noise)."""
    from daemon.postprocess import classify

    images = normalise_uint8(mnist_test[0][:2000])
    # crops the network is unsure of: two digits overlaid, and noise
    rng = np.random.default_rng(3)
    blends = np.clip(images[:200] + images[200:400][::-1], 0, 1)
    noise = rng.random((100, 28, 28, 1)).astype(np.float32) * (rng.random((100, 1, 1, 1)) < 0.5)
    batch = np.concatenate([images, blends, noise])
    with backends.load_backend(backend_settings(type="onnxruntime", onnx_precision="fp32")) as exact:
        expected = exact.infer(batch)
    with backends.load_backend(backend_settings(type="onnxruntime")) as fast:
        assert fast.name == "onnxruntime-int8"
        got = fast.infer(batch)
        assert 0 < fast.rechecked < 0.25 * len(batch)  # some rows, not most
    for min_confidence in (0.5, 0.9):
        assert [classify(p, min_confidence)[0] for p in got] == [
            classify(p, min_confidence)[0] for p in expected
        ]
    rechecked = got.max(1) < onnxruntime_backend.RECHECK_BELOW
    assert np.array_equal(got[rechecked], expected[rechecked])  # run again: the float answer itself
    assert 0 < np.abs(got - expected).max() < 0.05  # the rest: int8, close to float


def test_the_exact_answer_skips_the_int8_copy_and_comes_in_chunks(mnist_test):
    """The Reader's second look asks for the float model straight away (the crops are unsure)."""
    batch = normalise_uint8(mnist_test[0][:70])
    with backends.load_backend(backend_settings(type="onnxruntime", onnx_precision="fp32")) as exact:
        expected = exact.infer(batch)
        assert np.array_equal(exact.infer_exact(batch), exact.infer_all(batch))
    with backends.load_backend(backend_settings(type="onnxruntime"), max_batch=32) as fast:
        got = fast.infer_exact(batch)
        assert fast.rows == 0  # the int8 copy was not asked
    assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-6)


@pytest.mark.host  # the meter digits are drawn with Pillow (training's generator)
def test_int8_drums_in_transition_get_the_float_answer_even_when_sure():
    """A box that cannot roll takes the transition class out and lets the small rest decide
    (postprocess.for_style): quantisation noise there would change the digit, so a row the
    int8 copy calls "in transition" is run in float32 however sure it is."""
    from daemon import preprocess
    from daemon.model_meta import TRANSITION_CLASS
    from engine_build import meter_digits

    crops, _, brights = meter_digits.render_crops(300, np.random.default_rng(7), held_out=True)
    polarity = {True: "light_on_dark", False: "dark_on_light"}
    prepared = [
        preprocess.prepare(c, preprocess.PreprocessParams(polarity=polarity[b]))
        for c, b in zip(crops, brights)
    ]
    batch = np.stack([p.tensor for p in prepared if not p.empty])
    with backends.load_backend(backend_settings(type="onnxruntime", onnx_precision="fp32")) as exact:
        expected = exact.infer(batch)
    with backends.load_backend(backend_settings(type="onnxruntime")) as fast:
        got = fast.infer(batch)
        int8_alone = fast.int8_session.run(None, {fast.input_name: batch.reshape(len(batch), 1, 28, 28)})[0]
    sure_transitions = (int8_alone.argmax(1) == TRANSITION_CLASS) & (
        int8_alone.max(1) >= onnxruntime_backend.RECHECK_BELOW
    )
    assert sure_transitions.sum() >= 10  # measured: 42 of 300
    assert np.array_equal(got[sure_transitions], expected[sure_transitions])


def test_int8_copy_missing_or_made_from_another_model_runs_float32(tmp_path, caplog):
    caplog.set_level("WARNING")
    alone = tmp_path / "alone"
    alone.mkdir()
    backend = backends.load_backend(
        backend_settings(type="onnxruntime", onnx_model=str(copy_model("digits", alone, False)))
    )
    assert backend.name == "onnxruntime-fp32" and "make quantize" in caplog.text
    stale = tmp_path / "stale"
    stale.mkdir()
    model = copy_model("digits", stale)
    shutil.copy(str(MODELS / "small.onnx"), str(model))  # retrained since the int8 copy was made
    shutil.copy(str(MODELS / "small.onnx.json"), str(model) + ".json")
    caplog.clear()
    backend = backends.load_backend(backend_settings(type="onnxruntime", onnx_model=str(model)))
    assert backend.name == "onnxruntime-fp32" and "another version" in caplog.text


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
