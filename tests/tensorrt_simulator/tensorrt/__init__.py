"""Simulated ``tensorrt`` module (tests only): see tests/tensorrt_simulator/README.md.

The API surface follows the TensorRT Python API reference of the version in
``DIGITD_TRT_SIM_VERSION``: 8.2 has only the binding-index API and
``max_workspace_size``; 10 has only the tensor-name API and memory pools; 11 has
no weak typing (no ``BuilderFlag.FP16/INT8``, no ``platform_has_fast_*``, no INT8
calibrator: every network is strongly typed). Calls a version lacks do not exist
here either (AttributeError), and classes use __slots__ so that setting a removed
property fails too. names/*.txt (list_names.py) hold the names of the real wheels.

Every object that owns GPU memory remembers the CUDA context current when it was
made; releasing it under no or another context fails like TensorRT's default
allocator does ("Cuda Runtime (invalid argument)"), see pycuda.driver.lifetime_errors.
"""

import enum
import json
import os
import struct

import numpy as np
import pycuda.driver as _cuda

__version__ = os.environ.get("DIGITD_TRT_SIM_VERSION", "8.2.1.8")
_MAJOR, _MINOR = (int(p) for p in __version__.split(".")[:2])
_TENSOR_API = (_MAJOR, _MINOR) >= (8, 5)
_BINDING_API = _MAJOR < 10
_POOL_API = (_MAJOR, _MINOR) >= (8, 4)
_MAGIC = b"SIMTRT01"
_OPSET_LIMIT = 13 if (_MAJOR, _MINOR) < (8, 6) else 17
_WEAK_TYPING = _MAJOR < 11  # BuilderFlag.FP16/INT8, platform_has_fast_*, the INT8 calibrator
_STRONG_TYPING = _MAJOR >= 10  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (always on in 11)
calls = []  # (method, args) log that tests inspect


class _CudaOwned(object):
    """An object holding GPU memory: freed in the CUDA context it was created under, or it fails."""

    __slots__ = ("_created_in",)

    def _bind_to_context(self):
        self._created_in = _cuda.Context.get_current()

    def __del__(self):
        _cuda.check_tensorrt_release(getattr(self, "_created_in", None), type(self).__name__)


class ILogger(object):
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self):
        pass

    def log(self, severity, msg):
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity=ILogger.Severity.WARNING):
        ILogger.__init__(self)
        self.min_severity = min_severity

    def log(self, severity, msg):
        pass


def _log(logger, severity, message):
    if logger is not None:
        logger.log(severity, message)


def init_libnvinfer_plugins(logger, namespace):
    return True


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


def nptype(dtype):
    return {
        DataType.FLOAT: np.float32,
        DataType.HALF: np.float16,
        DataType.INT8: np.int8,
        DataType.INT32: np.int32,
    }[dtype]


def volume(shape):
    return int(np.prod(list(shape)))


if _MAJOR < 10:

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0

elif _MAJOR == 10:

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0  # deprecated, ignored: explicit batch is the only mode
        STRONGLY_TYPED = 1

else:

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 0  # accepted and ignored: every network is strongly typed


if _WEAK_TYPING:

    class BuilderFlag(enum.IntEnum):
        FP16 = 0
        INT8 = 1
        TF32 = 6

else:

    class BuilderFlag(enum.IntEnum):
        TF32 = 6


if _POOL_API:

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0


if _TENSOR_API:

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2


if _WEAK_TYPING:

    class IInt8EntropyCalibrator2(object):
        def __init__(self):
            pass


class ITensor(object):
    def __init__(self, name, shape, dtype=DataType.FLOAT):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype


class INetworkDefinition(_CudaOwned):
    def __init__(self, flags):
        self._bind_to_context()
        self.explicit_batch = _MAJOR >= 10 or bool(
            flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        )
        self.strongly_typed = _MAJOR >= 11 or (
            _STRONG_TYPING and bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        )
        self.onnx_bytes = None
        self.inputs = []
        self.outputs = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    @property
    def num_outputs(self):
        return len(self.outputs)

    def get_input(self, index):
        return self.inputs[index]

    def get_output(self, index):
        return self.outputs[index]


class _ParserError(object):
    def __init__(self, text):
        self.text = text

    def desc(self):
        return self.text

    def __str__(self):
        return self.text


class OnnxParser(_CudaOwned):
    def __init__(self, network, logger):
        self._bind_to_context()
        self.network = network
        self.logger = logger
        self.errors = []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, index):
        return self.errors[index]

    def clear_errors(self):
        self.errors = []

    def parse(self, model):
        import onnx

        calls.append(("OnnxParser.parse", len(model)))
        if not self.network.explicit_batch:
            self.errors.append(
                _ParserError("ONNX parser only supports networks with an explicit batch dimension")
            )
            return False
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001 - report like the real parser does
            self.errors.append(_ParserError("ModelImporter.cpp: failed to parse ONNX model: %s" % exc))
            return False
        opset = max(e.version for e in proto.opset_import if e.domain in ("", "ai.onnx"))
        if opset > _OPSET_LIMIT:
            self.errors.append(
                _ParserError(
                    "Unsupported ONNX opset %d (this parser supports up to %d)" % (opset, _OPSET_LIMIT)
                )
            )
            return False
        supported = {
            "Add",
            "Conv",
            "MatMul",
            "MaxPool",
            "Mul",
            "Relu",
            "Reshape",
            "Softmax",
            "Transpose",
            "Gemm",
            "Flatten",
            "BatchNormalization",
            "Cast",
            "Identity",
            "Constant",
        }
        for node in proto.graph.node:
            if node.op_type not in supported:
                self.errors.append(_ParserError("No importer registered for op: %s" % node.op_type))
        if self.errors:
            return False

        def dims(value):
            return tuple(d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim)

        self.network.onnx_bytes = bytes(model)
        self.network.inputs = [ITensor(v.name, dims(v)) for v in proto.graph.input]
        self.network.outputs = [ITensor(v.name, dims(v)) for v in proto.graph.output]
        return True


class IOptimizationProfile(object):
    def __init__(self):
        self.shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's parameter names
        calls.append(("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max)))
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input):  # noqa: A002
        return list(self.shapes[input])


def _timing_cache_header():
    return ("SIMCACHE %s %s;" % (__version__, _cuda.Device(0).name())).encode("utf-8")


class ITimingCache(_CudaOwned):
    def __init__(self, data):
        self._bind_to_context()
        self._data = bytes(data) or _timing_cache_header()

    def _matches_this_device(self):
        return self._data.startswith(_timing_cache_header())

    def serialize(self):
        return IHostMemory(self._data)


class _BuilderConfigBase(_CudaOwned):
    __slots__ = ("flags", "_profiles", "_calibrator", "_timing_cache", "_workspace")

    def __init__(self):
        self._bind_to_context()
        self.flags = set()
        self._profiles = []
        self._calibrator = None
        self._timing_cache = None
        self._workspace = None

    if _WEAK_TYPING:

        @property
        def int8_calibrator(self):
            return self._calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, calibrator):
            self._calibrator = calibrator

    def set_flag(self, flag):
        calls.append(("IBuilderConfig.set_flag", flag.name))
        self.flags.add(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        calls.append(("IBuilderConfig.create_timing_cache", len(serialized_timing_cache)))
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache, ignore_mismatch):
        calls.append(("IBuilderConfig.set_timing_cache", bool(ignore_mismatch)))
        if not ignore_mismatch and not cache._matches_this_device():
            return False  # the real one logs "timing cache ... mismatch" and refuses it
        self._timing_cache = cache
        return True

    def get_timing_cache(self):
        return self._timing_cache


if _POOL_API:

    class IBuilderConfig(_BuilderConfigBase):
        __slots__ = ()

        def set_memory_pool_limit(self, pool, pool_size):
            calls.append(("IBuilderConfig.set_memory_pool_limit", pool.name, pool_size))
            self._workspace = pool_size

        def get_memory_pool_limit(self, pool):
            return self._workspace

else:

    class IBuilderConfig(_BuilderConfigBase):
        __slots__ = ()

        @property
        def max_workspace_size(self):
            return self._workspace

        @max_workspace_size.setter
        def max_workspace_size(self, size):
            calls.append(("IBuilderConfig.max_workspace_size", size))
            self._workspace = size


class Builder(_CudaOwned):
    def __init__(self, logger):
        self._bind_to_context()
        self.logger = logger

    if _WEAK_TYPING:

        @property
        def platform_has_fast_fp16(self):
            return True

        @property
        def platform_has_fast_int8(self):
            return False  # the Nano's Maxwell

    def create_network(self, flags=0):
        calls.append(("Builder.create_network", flags))
        return INetworkDefinition(flags)

    def create_builder_config(self):
        return IBuilderConfig()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        calls.append(("Builder.build_serialized_network",))
        if network.onnx_bytes is None:
            _log(self.logger, ILogger.Severity.ERROR, "Network must have at least one output")
            return None
        (model_input,) = network.inputs
        if -1 in model_input.shape and not config._profiles:
            _log(
                self.logger,
                ILogger.Severity.ERROR,
                "Network has dynamic or shape inputs, but no optimization profile has been defined.",
            )
            return None
        if not config._workspace:
            _log(self.logger, ILogger.Severity.WARNING, "no workspace limit set")
        shapes = config._profiles[0].shapes.get(model_input.name)
        if shapes is None:
            _log(self.logger, ILogger.Severity.ERROR, "profile lacks input %s" % model_input.name)
            return None
        for shape in shapes:
            if len(shape) != len(model_input.shape) or any(
                want not in (-1, got) for want, got in zip(model_input.shape, shape)
            ):
                _log(
                    self.logger,
                    ILogger.Severity.ERROR,
                    "profile shape %s does not fit %s" % (shape, model_input.shape),
                )
                return None
        if not shapes[0][0] <= shapes[1][0] <= shapes[2][0]:
            _log(self.logger, ILogger.Severity.ERROR, "profile needs min <= opt <= max")
            return None
        onnx_bytes = network.onnx_bytes
        precision = "fp32"
        weak_flags = [flag.name for flag in config.flags if flag.name in ("FP16", "INT8")]
        if network.strongly_typed:
            if weak_flags:
                _log(
                    self.logger,
                    ILogger.Severity.ERROR,
                    "IBuilderConfig::setFlag: Error Code 3: API Usage Error (%s is not allowed with a "
                    "strongly typed network)" % weak_flags[0],
                )
                return None
            precision = "fp16" if _has_float16_weights(onnx_bytes) else "fp32"  # types come from the model
        elif "INT8" in weak_flags:
            precision = "int8"  # numerically simulated as FP32: calibration is exercised, not emulated
            _calibrate(config.int8_calibrator, model_input.name)
        elif "FP16" in weak_flags:
            precision = "fp16"
            onnx_bytes = _to_float16(onnx_bytes)
        header = {
            "version": __version__,
            "precision": precision,
            "input": [model_input.name, list(model_input.shape)],
            "output": [network.outputs[0].name, list(network.outputs[0].shape)],
            "profile": [list(s) for s in shapes],
        }
        encoded = json.dumps(header).encode("utf-8")
        return IHostMemory(_MAGIC + struct.pack("<I", len(encoded)) + encoded + onnx_bytes)


def _calibrate(calibrator, input_name):
    if calibrator is None:
        raise RuntimeError("INT8 requested without a calibrator")
    cache = calibrator.read_calibration_cache()
    if cache:
        return
    batches = 0
    while True:
        pointers = calibrator.get_batch([input_name])
        if not pointers:
            break
        _cuda.device_view(int(pointers[0]), 4)  # the pointer must be real device memory
        batches += 1
    calibrator.write_calibration_cache(b"SIMCALIB batches=%d" % batches)


def _has_float16_weights(onnx_bytes):
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def _to_float16(onnx_bytes):
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load_model_from_string(onnx_bytes), keep_io_types=True)
    return model.SerializeToString()


class IHostMemory(_CudaOwned):
    def __init__(self, data):
        self._bind_to_context()
        self._data = data
        self.nbytes = len(data)

    def __bytes__(self):
        return self._data

    def __buffer__(self, flags):
        return memoryview(self._data)


class Runtime(_CudaOwned):
    def __init__(self, logger):
        self._bind_to_context()
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(serialized_engine)
        calls.append(("Runtime.deserialize_cuda_engine", len(data)))
        if not data.startswith(_MAGIC):
            _log(
                self.logger,
                ILogger.Severity.ERROR,
                "1: [stdArchiveReader.cpp] Serialization assertion failed: magic",
            )
            return None
        (length,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12 : 12 + length].decode("utf-8"))
        if header["version"] != __version__:
            _log(
                self.logger,
                ILogger.Severity.ERROR,
                "The engine plan file is not compatible with this version of TensorRT, expecting library "
                "version %s got %s, please rebuild." % (__version__, header["version"]),
            )
            return None
        _cuda._require_context("deserializeCudaEngine")
        return ICudaEngine(header, data[12 + length :])


class ICudaEngine(_CudaOwned):
    def __init__(self, header, onnx_bytes):
        import onnxruntime as ort

        self._bind_to_context()

        self.header = header
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.names = [header["input"][0], header["output"][0]]
        self.shapes = [tuple(header["input"][1]), tuple(header["output"][1])]

    def create_execution_context(self):
        _cuda._require_context("createExecutionContext")
        return IExecutionContext(self)

    def _profile(self, index):
        return [tuple(s) for s in self.header["profile"]] if index == 0 else None

    if _BINDING_API:

        @property
        def num_bindings(self):
            return 2

        def get_binding_name(self, index):
            return self.names[index]

        def get_binding_index(self, name):
            return self.names.index(name) if name in self.names else -1

        def binding_is_input(self, index):
            if isinstance(index, str):
                index = self.get_binding_index(index)
            return index == 0

        def get_binding_shape(self, index):
            return self.shapes[index]

        def get_binding_dtype(self, index):
            return DataType.FLOAT

        def get_profile_shape(self, profile_index, binding):
            if isinstance(binding, str):
                binding = self.get_binding_index(binding)
            if binding != 0:
                raise ValueError("not an input binding")
            return self._profile(profile_index)

    if _TENSOR_API:

        @property
        def num_io_tensors(self):
            return 2

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.shapes[self.names.index(name)]

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile_index):
            if name != self.names[0]:
                raise ValueError("not an input tensor")
            return self._profile(profile_index)


class IExecutionContext(_CudaOwned):
    def __init__(self, engine):
        self._bind_to_context()
        self.engine = engine
        self.input_shape = None
        self.addresses = {}

    def _accept_shape(self, shape):
        shape = tuple(int(d) for d in shape)
        low, _, high = self.engine._profile(0)
        if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            return False
        self.input_shape = shape
        return True

    def _enqueue(self, input_address, output_address, stream_handle):
        if self.input_shape is None:
            raise RuntimeError("input shape not set before execution")
        stream = _cuda.stream_from_handle(stream_handle)
        shape = self.input_shape
        count = volume(shape)
        out_count = shape[0] * self.engine.shapes[1][-1]

        def run():
            data = _cuda.device_view(input_address, count * 4).view(np.float32).reshape(shape)
            result = self.engine.session.run(None, {self.engine.names[0]: np.array(data)})[0]
            _cuda.device_view(output_address, out_count * 4)[:] = (
                result.astype(np.float32).reshape(-1).view(np.uint8)
            )

        stream.enqueue(run)
        return True

    @property
    def all_binding_shapes_specified(self):  # still there in 10 and 11
        return self.input_shape is not None

    if _BINDING_API:

        def set_binding_shape(self, binding, shape):
            calls.append(("IExecutionContext.set_binding_shape", binding, tuple(shape)))
            return binding == 0 and self._accept_shape(shape)

        def execute_async_v2(self, bindings, stream_handle, input_consumed=None):
            _cuda._require_context("enqueueV2")
            calls.append(("IExecutionContext.execute_async_v2", len(bindings)))
            return self._enqueue(int(bindings[0]), int(bindings[1]), stream_handle)

    if _TENSOR_API:

        def set_input_shape(self, name, shape):
            calls.append(("IExecutionContext.set_input_shape", name, tuple(shape)))
            return name == self.engine.names[0] and self._accept_shape(shape)

        def set_tensor_address(self, name, memory):
            calls.append(("IExecutionContext.set_tensor_address", name))
            if name not in self.engine.names:
                return False
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            _cuda._require_context("enqueueV3")
            calls.append(("IExecutionContext.execute_async_v3",))
            if set(self.addresses) != set(self.engine.names):
                raise RuntimeError(
                    "tensor addresses not set for %s" % (set(self.engine.names) - set(self.addresses))
                )
            names = self.engine.names
            return self._enqueue(self.addresses[names[0]], self.addresses[names[1]], stream_handle)
