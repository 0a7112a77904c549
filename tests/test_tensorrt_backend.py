"""The TensorRT backend and engine builder, run unchanged through the TensorRT/pycuda simulator
(tests/tensorrt_simulator) in four API flavours: 8.2 (binding index), 8.6 (both), 10 (tensor
names, weak typing deprecated) and 11 (strongly typed networks only, no INT8 calibrator).

Nothing here touches a GPU: it proves API use, buffer handling, context discipline (every object
freed under the context it was made in) and numbers.
"""

import gc
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from daemon import config, model_meta
from daemon.backends import BackendUnavailable, load_backend
from daemon.preprocess import normalise_uint8
from tests.helpers import MODELS, ROOT, run_daemon, write_config

SIMULATOR = ROOT / "tests" / "tensorrt_simulator"
FLAVOURS = {"8.2": "8.2.1.8", "8.6": "8.6.1", "10": "10.3.0", "11": "11.4.0"}
# The real wheels each flavour's names are checked against (names/, made by list_names.py).
# 8.2 ships only inside JetPack, so the 8.2 flavour is checked against 8.6.1, the oldest wheel.
REAL_NAMES = {"8.2": ["8.6.1"], "8.6": ["8.6.1"], "10": ["10.3.0", "10.16.1.11"], "11": ["11.4.0.106"]}


def major(trt):
    return int(trt.__version__.split(".")[0])


def _purge_simulated_modules():
    for name in list(sys.modules):
        if (
            name == "tensorrt"
            or name.startswith("tensorrt.")
            or name == "pycuda"
            or name.startswith("pycuda.")
        ):
            del sys.modules[name]


@pytest.fixture(params=sorted(FLAVOURS))
def trt_sim(request, monkeypatch):
    """(tensorrt, pycuda.driver) simulated modules of one API flavour."""
    monkeypatch.setenv("DIGITD_TRT_SIM_VERSION", FLAVOURS[request.param])
    monkeypatch.syspath_prepend(str(SIMULATOR))
    _purge_simulated_modules()
    import pycuda.driver as cuda
    import tensorrt as trt

    yield trt, cuda
    gc.collect()
    errors = list(cuda.lifetime_errors)
    _purge_simulated_modules()
    assert not errors, "objects freed outside their CUDA context: %s" % errors


@pytest.fixture
def model_dir(tmp_path):
    for name in ("digits.onnx", "digits.onnx.json", "digits.fp16.onnx", "digits.fp16.onnx.json"):
        shutil.copy(str(MODELS / name), str(tmp_path / name))
    return tmp_path


def build(trt, cuda, model_dir, precision="fp16", **kwargs):
    from daemon.tensorrt import build as build_engine

    return build_engine.build(
        trt,
        cuda,
        model_dir / "digits.onnx",
        model_dir / ("digits.%s.engine" % precision),
        precision,
        timing_cache=str(model_dir / "timing.cache"),
        **kwargs,
    )


def backend_settings(model_dir, **values):
    values.setdefault("engine", str(model_dir / "digits.fp16.engine"))
    values.setdefault("onnx_model", str(model_dir / "digits.onnx"))
    return config.from_dict({"source": {"type": "v4l2"}, "backend": values}).backend


def test_builder_uses_each_versions_config_api(trt_sim, model_dir):
    trt, cuda = trt_sim
    engine_path, meta = build(trt, cuda, model_dir)
    names = [c[0] for c in trt.calls]
    if trt.__version__.startswith("8.2"):
        assert ("IBuilderConfig.max_workspace_size", 256 << 20) in trt.calls
    else:
        assert ("IBuilderConfig.set_memory_pool_limit", "WORKSPACE", 256 << 20) in trt.calls
    if major(trt) < 10:
        assert ("Builder.create_network", 1) in trt.calls  # EXPLICIT_BATCH flag
    elif major(trt) == 10:
        assert ("Builder.create_network", 0) in trt.calls
    else:
        assert ("Builder.create_network", 1) in trt.calls  # STRONGLY_TYPED (value 0 in 11)
    assert (
        "IOptimizationProfile.set_shape",
        "image",
        (1, 1, 28, 28),
        (8, 1, 28, 28),
        (32, 1, 28, 28),
    ) in trt.calls
    if major(trt) < 11:
        assert ("IBuilderConfig.set_flag", "FP16") in trt.calls
        assert meta["build_path"] == "builder-flag" and "network_onnx" not in meta
    else:  # no FP16 flag: a strongly typed network from the FP16 ONNX
        assert not any(c[0] == "IBuilderConfig.set_flag" for c in trt.calls)
        assert meta["build_path"] == "strongly-typed"
        assert meta["network_onnx"] == {
            "file": "digits.fp16.onnx",
            "sha256": model_meta.sha256_of(model_dir / "digits.fp16.onnx"),
        }
    assert "Builder.build_serialized_network" in names
    assert meta["tensorrt_version"] == trt.__version__ and meta["precision"] == "fp16"
    assert meta["gpu_name"] == "NVIDIA Tegra X1" and meta["compute_capability"] == "5.3"
    assert meta["onnx_sha256"] == model_meta.sha256_of(model_dir / "digits.onnx")
    assert meta["profile"] == {"min": 1, "opt": 8, "max": 32}
    assert json.loads((model_dir / "digits.fp16.engine.json").read_text()) == meta
    assert (model_dir / "timing.cache").exists()
    build(trt, cuda, model_dir)  # a second build reads the timing cache back
    assert any(c[0] == "IBuilderConfig.create_timing_cache" and c[1] > 0 for c in trt.calls)


def test_removed_apis_really_are_gone_in_the_simulator(trt_sim):
    trt, cuda = trt_sim
    config_class = trt.IBuilderConfig
    if major(trt) >= 10:
        assert not hasattr(config_class, "max_workspace_size")
        with pytest.raises(AttributeError):
            trt.Builder(trt.Logger()).create_builder_config().max_workspace_size = 1
        assert not hasattr(trt.ICudaEngine, "get_binding_index")
        assert not hasattr(trt.IExecutionContext, "execute_async_v2")
    elif trt.__version__.startswith("8.2"):
        assert not hasattr(config_class, "set_memory_pool_limit")
        assert not hasattr(trt.IExecutionContext, "execute_async_v3")
    if major(trt) >= 11:
        assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
        assert not hasattr(trt, "IInt8EntropyCalibrator2")
        assert not hasattr(trt.Builder, "platform_has_fast_fp16")
        with pytest.raises(AttributeError):
            trt.Builder(trt.Logger()).create_builder_config().int8_calibrator = None


def _simulator_names(flavour):
    sys.path.insert(0, str(SIMULATOR))
    try:
        import list_names
    finally:
        sys.path.remove(str(SIMULATOR))
    return set(list_names.simulator_names(FLAVOURS[flavour]))


def _real_names(version):
    lines = (SIMULATOR / "names" / ("tensorrt-%s.txt" % version)).read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_simulator_names_exist_in_the_real_tensorrt_wheels(flavour):
    """The simulator offers nothing the real bindings of that release lack (names/ lists were
    taken from the PyPI wheels by list_names.py), and what it drops is really gone there."""
    simulated = _simulator_names(flavour)
    assert "Builder.create_network" in simulated and len(simulated) > 50
    dropped = _simulator_names("8.6") - simulated  # what this flavour removes from 8.6's surface
    for version in REAL_NAMES[flavour]:
        real = _real_names(version)
        assert not simulated - real, "simulator %s offers names TensorRT %s lacks" % (flavour, version)
        if not flavour.startswith("8"):
            assert not dropped & real, "simulator %s hides names TensorRT %s has" % (flavour, version)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the fault it provokes
def test_simulator_fails_like_tensorrt_when_an_object_outlives_its_context(trt_sim):
    """The check the teardown tests rely on: a Builder freed with no context current is an error."""
    trt, cuda = trt_sim
    cuda.init()
    context = cuda.Device(0).make_context()
    builder = trt.Builder(trt.Logger())
    context.pop()
    del builder
    gc.collect()
    assert len(cuda.lifetime_errors) == 1 and "Cuda Runtime (invalid argument)" in cuda.lifetime_errors[0]
    cuda.lifetime_errors[:] = []  # seen; the fixture must not fail on this one
    context.detach()


@pytest.mark.parametrize("precision", ["fp16", "fp32", "int8"])
def test_build_frees_every_object_while_its_context_is_current(trt_sim, model_dir, precision):
    trt, cuda = trt_sim
    from daemon.tensorrt import build as build_engine

    if precision == "int8" and major(trt) >= 11:
        with pytest.raises(build_engine.EngineBuildError, match="INT8 needs TensorRT's calibrator API"):
            build(trt, cuda, model_dir, precision, calibration_images=64)
    else:
        _, meta = build(trt, cuda, model_dir, precision, calibration_images=64)
        assert meta["precision"] == precision
    gc.collect()
    assert cuda.lifetime_errors == [] and not cuda.Context.live


def test_failed_build_frees_its_objects_too(trt_sim, model_dir):
    trt, cuda = trt_sim
    from daemon.tensorrt import build as build_engine

    for name in ("digits.onnx", "digits.fp16.onnx"):
        (model_dir / name).write_bytes(b"not an onnx file")
    with pytest.raises(build_engine.EngineBuildError, match="cannot parse"):
        build(trt, cuda, model_dir)
    gc.collect()
    assert cuda.lifetime_errors == [] and not cuda.Context.live


def test_timing_cache_from_another_tensorrt_is_replaced_not_ignored(trt_sim, model_dir, caplog):
    trt, cuda = trt_sim
    (model_dir / "timing.cache").write_bytes(b"SIMCACHE 7.1.3 Xavier;old tactics")
    build(trt, cuda, model_dir)
    assert "was made by another TensorRT or GPU; starting a fresh one" in caplog.text
    assert (model_dir / "timing.cache").read_bytes().startswith(b"SIMCACHE %s " % trt.__version__.encode())


@pytest.mark.parametrize("zero_copy", [False, True], ids=["copies", "zero-copy"])
def test_predictions_equal_onnx_runtime_for_full_and_partial_batches(
    trt_sim, model_dir, mnist_test, zero_copy
):
    trt, cuda = trt_sim
    build(trt, cuda, model_dir)
    from daemon.backends.onnxruntime import OnnxRuntimeBackend

    reference = OnnxRuntimeBackend(model_dir / "digits.fp16.onnx").load()
    backend = load_backend(backend_settings(model_dir, type="tensorrt", zero_copy=zero_copy), max_batch=32)
    try:
        assert backend.name == "tensorrt-fp16"
        assert backend.api == (
            "tensor" if major(trt) >= 10 or trt.__version__.startswith("8.6") else "binding"
        )
        images = normalise_uint8(mnist_test[0][:77])
        for size in (32, 5, 1):  # full, partial (dynamic shape) and single
            result = backend.infer(images[:size])
            assert result.shape == (size, 12)  # ten digits, "not a digit", "digit in transition"
            assert np.array_equal(result, reference.infer(images[:size]))
        everything = backend.infer_all(images)  # 77 crops in chunks of 32
        assert (everything.argmax(1) == mnist_test[1][:77]).mean() > 0.97
        with pytest.raises(ValueError, match="exceeds"):
            backend.infer(images[:33])
    finally:
        backend.close()
    assert not cuda.Context.live, "close() must destroy its CUDA context"


def test_inference_runs_from_another_thread_with_push_pop(trt_sim, model_dir, mnist_test):
    trt, cuda = trt_sim
    build(trt, cuda, model_dir)
    backend = load_backend(backend_settings(model_dir, type="tensorrt"))
    results = {}

    def worker():
        results["probs"] = backend.infer(normalise_uint8(mnist_test[0][:4]))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results["probs"].argmax(1).tolist() == mnist_test[1][:4].tolist()
    assert cuda.Context.get_current() is None  # nothing left current in the loading thread
    backend.close()


def test_stale_engine_is_refused_with_the_reason(trt_sim, model_dir, monkeypatch):
    trt, cuda = trt_sim
    build(trt, cuda, model_dir)
    meta_path = model_dir / "digits.fp16.engine.json"
    meta = json.loads(meta_path.read_text())
    meta["tensorrt_version"] = "7.1.3"
    meta["gpu_name"] = "Xavier"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BackendUnavailable) as error:
        load_backend(backend_settings(model_dir, type="tensorrt"))
    message = str(error.value)
    assert "built with TensorRT 7.1.3, this is TensorRT %s" % trt.__version__ in message
    assert "'Xavier'" in message and "make build-engine" in message
    assert not cuda.Context.live


def test_engine_from_another_onnx_is_rebuilt_when_allowed(trt_sim, model_dir, mnist_test):
    trt, cuda = trt_sim
    build(trt, cuda, model_dir)
    import onnx

    changed = onnx.load(str(model_dir / "digits.onnx"))
    changed.producer_version = "retrained"  # same graph, another file: another hash
    onnx.save(changed, str(model_dir / "digits.onnx"))
    settings = backend_settings(model_dir, type="tensorrt")
    with pytest.raises(BackendUnavailable, match="built from ONNX sha256"):
        load_backend(settings)
    settings.rebuild_stale = True
    cuda.lifetime_errors[:] = []
    backend = load_backend(settings)
    gc.collect()
    assert cuda.lifetime_errors == [], "the rebuild freed TensorRT objects outside its context"
    try:
        assert (
            backend.infer(normalise_uint8(mnist_test[0][:3])).argmax(1).tolist() == mnist_test[1][:3].tolist()
        )
    finally:
        backend.close()
    assert model_meta.read(model_dir / "digits.fp16.engine")["onnx_sha256"] == model_meta.sha256_of(
        model_dir / "digits.onnx"
    )


def test_engine_without_a_matching_sidecar_is_refused(trt_sim, model_dir, monkeypatch):
    trt, cuda = trt_sim
    build(trt, cuda, model_dir)
    meta_path = model_dir / "digits.fp16.engine.json"
    other = "10.3.0" if trt.__version__.startswith("8") else "8.2.1.8"
    monkeypatch.setattr(trt, "__version__", other)
    with pytest.raises(BackendUnavailable, match="built with TensorRT"):
        load_backend(backend_settings(model_dir, type="tensorrt"))
    meta_path.unlink()  # without a sidecar the check cannot vouch for the engine
    with pytest.raises(BackendUnavailable, match="cannot read model metadata"):
        load_backend(backend_settings(model_dir, type="tensorrt"))


def test_auto_prefers_tensorrt_when_an_engine_exists(trt_sim, model_dir, caplog):
    trt, cuda = trt_sim
    caplog.set_level("INFO")
    settings = backend_settings(model_dir, type="auto")
    assert load_backend(settings).name.startswith("onnxruntime")  # no engine yet
    assert "does not exist (make build-engine)" in caplog.text
    build(trt, cuda, model_dir)
    backend = load_backend(settings)
    assert backend.name == "tensorrt-fp16"
    backend.close()


def test_int8_build_runs_the_calibrator_and_writes_its_cache(trt_sim, model_dir):
    trt, cuda = trt_sim
    if major(trt) >= 11:
        pytest.skip("TensorRT 11 has no INT8 calibrator (test_build_frees_every_object... checks the error)")
    _, meta = build(trt, cuda, model_dir, precision="int8", calibration_images=256)
    assert meta["precision"] == "int8"
    cache = model_dir / "digits.int8.engine.calib"
    assert cache.read_bytes() == b"SIMCALIB batches=32"  # 256 images in batches of the opt size 8


def test_build_engine_cli_without_tensorrt_says_where_to_get_it_and_exits_69():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-m", "daemon.tensorrt.build", "--onnx", str(MODELS / "digits.onnx")],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env=env,
    )
    assert result.returncode == 69
    assert "TensorRT not found" in result.stderr and "JetPack" in result.stderr
    assert "Traceback" not in result.stderr


def simulated_env(version):
    return dict(os.environ, PYTHONPATH=str(SIMULATOR), DIGITD_TRT_SIM_VERSION=version)


def build_engine_cli(model_dir, tmp_path, version):
    """``python -m daemon.tensorrt.build`` in a subprocess that imports the simulator."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.tensorrt.build",
            "--onnx",
            str(model_dir / "digits.onnx"),
            "--timing-cache",
            str(tmp_path / "t.cache"),
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env=simulated_env(version),
    )


@pytest.mark.parametrize("flavour", ["8.2", "11"])
def test_build_engine_cli_through_the_simulator(tmp_path, model_dir, flavour):
    result = build_engine_cli(model_dir, tmp_path, FLAVOURS[flavour])
    assert result.returncode == 0, result.stderr
    path = "builder-flag" if flavour == "8.2" else "strongly-typed"
    assert "built %s: TensorRT %s, fp16 (%s)" % (
        model_dir / "digits.fp16.engine",
        FLAVOURS[flavour],
        path,
    ) in (result.stdout)
    assert "GPU NVIDIA Tegra X1 (sm 5.3)" in result.stdout
    assert "invalid argument" not in result.stderr and "Exception ignored" not in result.stderr


def test_tensorrt_path_never_imports_tensorflow(tmp_path, model_dir):
    env = simulated_env("10.3.0")
    onnx_path, engine_path = str(model_dir / "digits.onnx"), str(model_dir / "digits.fp16.engine")
    code = (
        "import sys, numpy as np\n"
        "import tensorrt as trt, pycuda.driver as cuda\n"
        "from daemon.tensorrt import build as build_engine\n"
        "from daemon import backends, config\n"
        "build_engine.build(trt, cuda, %r, %r, 'fp16', timing_cache=None)\n"
        "s = config.from_dict({'source': {'type': 'v4l2'}, 'backend': {'engine': %r, 'onnx_model': %r}}).backend\n"
        "b = backends.load_backend(s); b.infer(np.zeros((2, 28, 28, 1), np.float32)); b.close()\n"
        "print(b.name, 'tensorflow' in sys.modules)\n"
    ) % (onnx_path, engine_path, engine_path, onnx_path)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=str(ROOT), env=env, stdout=subprocess.PIPE, universal_newlines=True
    )
    assert out.stdout.split() == ["tensorrt-fp16", "False"]


@pytest.mark.mqtt
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_daemon_publishes_over_mosquitto_with_the_tensorrt_backend(
    flavour, tmp_path, model_dir, broker, subscriber_factory, schemas
):
    env = simulated_env(FLAVOURS[flavour])
    built = build_engine_cli(model_dir, tmp_path, FLAVOURS[flavour])
    assert built.returncode == 0, built.stderr
    config_path = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(ROOT / "samples" / "demo.mp4")},
        backend={
            "type": "auto",
            "engine": str(model_dir / "digits.fp16.engine"),
            "onnx_model": str(model_dir / "digits.onnx"),
        },
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(config_path, "--max-frames", "60", env=env)
    assert process.wait(120) == 0, process.log_path.read_text()
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= 60, timeout=10)
    predictions = subscriber.payloads("prediction")
    for payload in predictions:
        schemas["prediction"].validate(payload)
    assert {p["backend"] for p in predictions} == {"tensorrt-fp16"}
    truth = json.loads((ROOT / "samples" / "demo.mp4.labels.json").read_text())["truth"]
    right = sum(p["rois"][0]["digit"] == truth[p["frame"] - 1] for p in predictions)
    assert right >= 0.95 * len(predictions)


def test_each_network_builds_its_own_engine_beside_its_onnx(trt_sim, model_dir):
    """`make build-engine MODEL=small`: the small network's engine must not overwrite digitnet's."""
    from daemon.tensorrt import build as build_engine

    trt, cuda = trt_sim
    for name in ("digits.onnx", "digits.onnx.json", "digits.fp16.onnx", "digits.fp16.onnx.json"):
        shutil.copy(str(model_dir / name), str(model_dir / name.replace("digits", "small")))
    engine_path, _ = build_engine.build(
        trt, cuda, model_dir / "small.onnx", None, "fp16", timing_cache=str(model_dir / "timing.cache")
    )
    assert engine_path == str(model_dir / "small.fp16.engine")
    assert (model_dir / "small.fp16.engine").exists() and not (model_dir / "digits.fp16.engine").exists()
