"""Build a TensorRT engine from the ONNX model, on the Jetson (Python 3.6, TensorRT 8.2 ... 11).

    python3 -m daemon.tensorrt.build --onnx models/digits.onnx [--precision fp16|fp32|int8]

Explicit batch with one optimisation profile (min 1, opt 8, max 32 by default), a
256 MiB workspace, a reused timing cache, and a sidecar JSON next to the engine.
Precision by feature detection: where ``BuilderFlag.FP16`` exists (8.x-10.x) a weakly
typed network from the ONNX with that flag ("builder-flag"); where it does not (11.x)
a strongly typed network from the FP16 ONNX that ``make export`` writes beside it
("strongly-typed"). INT8 needs the calibrator API, which 11.x removed. Every TensorRT
and pycuda object is freed while the build's CUDA context is current (TensorRT#2052).
Follows the structure of TensorRT's samples/python/efficientdet/build_engine.py
(release 8.2): an EngineBuilder class, an INT8 calibrator, a thin main(args).
On a host without TensorRT it prints where to get it and exits 69.
"""

import argparse
import gc
import logging
import os
import sys
import time
import traceback

from daemon import model_meta
from daemon.tensorrt import common as trt_common

log = logging.getLogger(__name__)

EXIT_UNAVAILABLE = 69
PRECISIONS = ("fp16", "fp32", "int8")
BUILDER_FLAG = "builder-flag"  # weakly typed network, precision from BuilderFlag (TensorRT 8.x-10.x)
STRONGLY_TYPED = "strongly-typed"  # types from the ONNX itself (TensorRT 10+, the only way in 11)


class EngineBuildError(Exception):
    """The ONNX parser or the builder failed; the message carries TensorRT's error text."""


class MnistCalibrator(object):
    """Factory for an IInt8EntropyCalibrator2 over MNIST training images (preprocessed like the daemon)."""

    @staticmethod
    def create(trt, cuda, cache_path, image_count=2000, batch_size=32, data_dir=None):
        import numpy as np

        from daemon.preprocess import INPUT_SIZE, normalise_uint8

        images = read_idx_images(find_calibration_images(data_dir))
        batches = normalise_uint8(images[:image_count]).reshape(-1, 1, INPUT_SIZE, INPUT_SIZE)

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.position = 0
                self.device_input = cuda.mem_alloc(batch_size * batches[0].nbytes)

            def free(self):
                """Free the device batch buffer (the build's CUDA context must be current)."""
                if self.device_input is not None:
                    self.device_input.free()
                    self.device_input = None

            def get_batch_size(self):
                return batch_size

            def get_batch(self, names):
                if self.position + batch_size > len(batches):
                    return None
                chunk = np.ascontiguousarray(batches[self.position : self.position + batch_size])
                cuda.memcpy_htod(self.device_input, chunk)
                self.position += batch_size
                if self.position % (batch_size * 10) == 0:
                    log.info("INT8 calibration: %d / %d images", self.position, len(batches))
                return [int(self.device_input)]

            def read_calibration_cache(self):
                if os.path.exists(cache_path):
                    log.info("using calibration cache %s", cache_path)
                    with open(cache_path, "rb") as handle:
                        return handle.read()
                return None

            def write_calibration_cache(self, cache):
                with open(cache_path, "wb") as handle:
                    handle.write(bytes(cache))
                log.info("wrote calibration cache %s", cache_path)

        return Calibrator()


CALIBRATION_FILE = "train-images-idx3-ubyte.gz"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_calibration_images(data_dir=None):
    """The MNIST training images (IDX, gzipped) for INT8 calibration: in ``data_dir``, else in
    ./data/mnist, the project's data/mnist or ../shared/data/mnist."""
    folders = (
        [data_dir]
        if data_dir
        else [
            os.path.join("data", "mnist"),
            os.path.join(PROJECT_ROOT, "data", "mnist"),
            os.path.join(os.path.dirname(PROJECT_ROOT), "shared", "data", "mnist"),
        ]
    )
    for folder in folders:
        path = os.path.join(folder, CALIBRATION_FILE)
        if os.path.isfile(path):
            return path
    raise EngineBuildError(
        "INT8 calibration needs %s; looked in %s (copy MNIST there or pass --data-dir)"
        % (CALIBRATION_FILE, ", ".join(folders))
    )


def read_idx_images(path):
    """uint8 images [N, rows, cols] from a gzipped IDX3 file (the MNIST format)."""
    import gzip
    import struct

    import numpy as np

    with gzip.open(path, "rb") as handle:
        content = handle.read()
    if len(content) < 16 or struct.unpack(">I", content[:4])[0] != 2051:
        raise EngineBuildError("%s is not an IDX3 image file" % path)
    count, rows, cols = struct.unpack(">III", content[4:16])
    if len(content) != 16 + count * rows * cols:
        raise EngineBuildError("%s: %d bytes, expected %d" % (path, len(content), 16 + count * rows * cols))
    return np.frombuffer(content, np.uint8, offset=16).reshape(count, rows, cols)


class EngineBuilder(object):
    """ONNX -> serialized engine with the API of the installed TensorRT version."""

    def __init__(self, trt, cuda, workspace_mib=256):
        self.trt = trt
        self.cuda = cuda
        self.trt_logger = trt_common.make_trt_logger(trt)
        trt.init_libnvinfer_plugins(self.trt_logger, "")
        self.builder = trt.Builder(self.trt_logger)
        self.config = self.builder.create_builder_config()
        workspace = workspace_mib * (1 << 20)
        if hasattr(self.config, "set_memory_pool_limit"):  # TensorRT 8.4+
            self.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        else:  # TensorRT 8.2
            self.config.max_workspace_size = workspace
        self.network = None
        self.parser = None
        self.timing_cache = None
        self.calibrator = None
        self.input_name = None

    def release(self):
        """Free what TensorRT and pycuda hold, newest first; the CUDA context must still be current."""
        self.parser = None
        self.network = None
        self.timing_cache = None
        self.config = None  # holds the INT8 calibrator
        if self.calibrator is not None:
            self.calibrator.free()
            self.calibrator = None
        self.builder = None

    def create_network(self, onnx_path, profile, strongly_typed=False):
        """Parse the ONNX file into an explicit-batch network with one optimisation profile."""
        trt = self.trt
        flags = 0
        if strongly_typed:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        elif trt_common.trt_major(trt) < 10:  # explicit batch is the only mode (and the default) in 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        self.network = self.builder.create_network(flags)
        self.parser = trt.OnnxParser(self.network, self.trt_logger)
        with open(str(onnx_path), "rb") as handle:
            parsed = self.parser.parse(handle.read())
        if not parsed:
            errors = [str(self.parser.get_error(i)) for i in range(self.parser.num_errors)]
            for error in errors:
                log.error("ONNX parser: %s", error)
            raise EngineBuildError("cannot parse %s: %s" % (onnx_path, " | ".join(errors) or "unknown error"))
        model_input = self.network.get_input(0)
        self.input_name = model_input.name
        log.info(
            "network input %s %s, output %s",
            model_input.name,
            tuple(model_input.shape),
            tuple(self.network.get_output(0).shape),
        )
        from daemon.preprocess import INPUT_SIZE

        optimisation = self.builder.create_optimization_profile()
        shapes = [(size, 1, INPUT_SIZE, INPUT_SIZE) for size in profile]
        optimisation.set_shape(self.input_name, shapes[0], shapes[1], shapes[2])
        self.config.add_optimization_profile(optimisation)

    def create_engine(self, engine_path, precision, timing_cache_path=None, build_path=BUILDER_FLAG):
        """Build and write the engine; returns build seconds. A strongly typed network takes its
        precision from the ONNX, so no builder flag is set (11.x has none)."""
        trt = self.trt
        if build_path == BUILDER_FLAG and precision == "fp16":
            if not self.builder.platform_has_fast_fp16:
                log.warning("this GPU has no fast FP16; building FP16 anyway")
            self.config.set_flag(trt.BuilderFlag.FP16)
        elif build_path == BUILDER_FLAG and precision == "int8":
            if not self.builder.platform_has_fast_int8:
                log.warning("this GPU has no fast INT8 (the Nano's Maxwell does not); expect no speed-up")
            self.config.set_flag(trt.BuilderFlag.INT8)
            self.config.int8_calibrator = self.calibrator
        if timing_cache_path:
            self._use_timing_cache(timing_cache_path)
        started = time.time()
        log.info("building %s engine (this takes a few minutes on a Nano)", precision)
        serialized = self.builder.build_serialized_network(self.network, self.config)
        if serialized is None:
            raise EngineBuildError("TensorRT could not build the engine; see the TensorRT errors above")
        elapsed = time.time() - started
        with open(str(engine_path), "wb") as handle:
            handle.write(bytes(serialized))
        if self.timing_cache is not None:
            with open(timing_cache_path, "wb") as handle:
                handle.write(bytes(self.config.get_timing_cache().serialize()))
        log.info("wrote %s in %.1f s", engine_path, elapsed)
        return elapsed

    def _use_timing_cache(self, path):
        data = b""
        if os.path.exists(path):
            with open(path, "rb") as handle:
                data = handle.read()
            log.info("reusing timing cache %s (%d bytes)", path, len(data))
        self.timing_cache = self.config.create_timing_cache(data)
        if self.config.set_timing_cache(self.timing_cache, False):
            return
        log.warning("timing cache %s was made by another TensorRT or GPU; starting a fresh one", path)
        self.timing_cache = self.config.create_timing_cache(b"")
        if not self.config.set_timing_cache(self.timing_cache, False):
            raise EngineBuildError("TensorRT refused an empty timing cache (see the TensorRT errors above)")


def default_precision(trt, cuda):
    """fp16 where the GPU has fast FP16 (the Nano does), else fp32; TensorRT 11 cannot tell
    (platform_has_fast_fp16 is gone) and builds fp16 from the FP16 ONNX."""
    if not hasattr(trt.Builder, "platform_has_fast_fp16"):
        return "fp16"
    builder = trt.Builder(trt_common.make_trt_logger(trt))
    return "fp16" if builder.platform_has_fast_fp16 else "fp32"


def fp16_onnx_path(onnx_path):
    """models/digits.onnx -> models/digits.fp16.onnx (make export writes both)."""
    root, _ = os.path.splitext(str(onnx_path))
    return root + ".fp16.onnx"


def choose_build_path(trt, precision, onnx_path):
    """(build path, ONNX file the network is parsed from) for this TensorRT and precision."""
    flags = trt.BuilderFlag.__members__
    if precision == "int8":
        if "INT8" not in flags or not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise EngineBuildError(
                "INT8 needs TensorRT's calibrator API (IInt8EntropyCalibrator2, BuilderFlag.INT8), which "
                "TensorRT %s does not have; build fp16, or quantize the ONNX with Q/DQ nodes"
                % trt.__version__
            )
        return BUILDER_FLAG, str(onnx_path)
    if "FP16" in flags:  # weak typing exists (8.x-10.x): the flag decides the precision
        return BUILDER_FLAG, str(onnx_path)
    if "STRONGLY_TYPED" not in trt.NetworkDefinitionCreationFlag.__members__:
        raise EngineBuildError(
            "TensorRT %s has neither BuilderFlag.FP16 nor strongly typed networks" % trt.__version__
        )
    if precision == "fp32":
        return STRONGLY_TYPED, str(onnx_path)
    network_onnx = fp16_onnx_path(onnx_path)
    if not os.path.isfile(network_onnx):
        raise EngineBuildError(
            "TensorRT %s builds FP16 only from an FP16 model (strongly typed network), and %s does "
            "not exist (make export writes it)" % (trt.__version__, network_onnx)
        )
    return STRONGLY_TYPED, network_onnx


def default_engine_path(onnx_path, precision):
    """``models/small.onnx`` -> ``models/small.fp16.engine``: each network keeps its own engine."""
    folder, name = os.path.split(str(onnx_path))
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return os.path.join(folder, "%s.%s.engine" % (stem, precision))


def build(
    trt,
    cuda,
    onnx_path,
    engine_path=None,
    precision=None,
    profile=(1, 8, 32),
    workspace_mib=256,
    timing_cache=None,
    calibration_images=2000,
    calibration_cache=None,
    data_dir=None,
):
    """Build an engine with a fresh CUDA context; returns (engine path, sidecar dict).

    Everything TensorRT and pycuda made is freed before the context is popped: on TensorRT
    8.2, objects freed with no (or another) context current fail in cudaFree ("invalid
    argument") and can crash the process."""
    cuda.init()
    context = cuda.Device(0).make_context()
    try:
        return _build_in_context(
            trt,
            cuda,
            onnx_path,
            engine_path,
            precision,
            profile,
            workspace_mib,
            timing_cache,
            calibration_images,
            calibration_cache,
            data_dir,
        )
    except BaseException as error:
        # The traceback keeps the failed frames, and the TensorRT objects in them, alive.
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        gc.collect()  # objects in reference cycles, while the context is still current
        context.pop()
        context.detach()


def _build_in_context(
    trt,
    cuda,
    onnx_path,
    engine_path,
    precision,
    profile,
    workspace_mib,
    timing_cache,
    calibration_images,
    calibration_cache,
    data_dir,
):
    precision = precision or default_precision(trt, cuda)
    build_path, network_onnx = choose_build_path(trt, precision, onnx_path)
    engine_path = engine_path or default_engine_path(onnx_path, precision)
    builder = EngineBuilder(trt, cuda, workspace_mib)
    try:
        builder.create_network(network_onnx, profile, strongly_typed=build_path == STRONGLY_TYPED)
        if precision == "int8":
            builder.calibrator = MnistCalibrator.create(
                trt,
                cuda,
                calibration_cache or str(engine_path) + ".calib",
                calibration_images,
                profile[1],
                data_dir,
            )
        log.info("TensorRT %s: %s network from %s", trt.__version__, build_path, network_onnx)
        seconds = builder.create_engine(engine_path, precision, timing_cache, build_path)
    finally:
        builder.release()
    meta = trt_common.engine_sidecar(
        trt,
        cuda,
        onnx_path,
        precision,
        list(profile),
        seconds,
        build_path=build_path,
        network_onnx=network_onnx,
    )
    model_meta.write(engine_path, meta)
    return engine_path, meta


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Build a TensorRT engine from the ONNX digit model.")
    parser.add_argument("--onnx", default="models/digits.onnx")
    parser.add_argument(
        "--engine", default=None, help="default: beside the ONNX file, <name>.<precision>.engine"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None, help="default: fp16 if fast, else fp32"
    )
    parser.add_argument("--min-batch", type=int, default=1)
    parser.add_argument("--opt-batch", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--workspace-mib", type=int, default=256)
    parser.add_argument("--timing-cache", default="models/timing.cache")
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--calibration-cache", default=None)
    parser.add_argument("--data-dir", default=None, help="MNIST folder for INT8 calibration")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(args):
    """Returns 0, 69 when TensorRT/pycuda are missing, 1 when the build fails."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        import tensorrt as trt
    except ImportError as error:
        print("error: %s (%s)" % (trt_common.JETPACK_HINT, error), file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        import pycuda.driver as cuda
    except ImportError as error:
        print(
            "error: pycuda not found (%s); on the Jetson: export PATH=/usr/local/cuda/bin:$PATH; "
            "pip3 install pycuda" % error,
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    if not os.path.isfile(args.onnx):
        print("error: ONNX model %s does not exist (make export)" % args.onnx, file=sys.stderr)
        return 1
    profile = (args.min_batch, args.opt_batch, args.max_batch)
    if not 1 <= profile[0] <= profile[1] <= profile[2]:
        print("error: need 1 <= min-batch <= opt-batch <= max-batch, got %s" % (profile,), file=sys.stderr)
        return 1
    try:
        engine_path, meta = build(
            trt,
            cuda,
            args.onnx,
            args.engine,
            args.precision,
            profile,
            args.workspace_mib,
            args.timing_cache,
            args.calibration_images,
            args.calibration_cache,
            args.data_dir,
        )
    except (EngineBuildError, OSError) as error:
        print("error: %s" % error, file=sys.stderr)
        return 1
    except cuda.Error as error:
        print("error: CUDA: %s" % error, file=sys.stderr)
        return 1
    print(
        "built %s: TensorRT %s, %s (%s), GPU %s (sm %s), batch %s"
        % (
            engine_path,
            meta["tensorrt_version"],
            meta["precision"],
            meta["build_path"],
            meta["gpu_name"],
            meta["compute_capability"],
            profile,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
