"""TensorRT + pycuda on the Jetson's GPU (TensorRT 8.2 on JetPack 4.6 up to TensorRT 11).

- the engine's sidecar is checked against this TensorRT, GPU and ONNX file; a stale
  engine is refused with the reason, or rebuilt when ``backend.rebuild_stale`` is set;
- one CUDA context, created explicitly (no pycuda.autoinit) and pushed/popped around
  every call, so any thread may run inference;
- page-locked host and device buffers allocated once for the largest batch, or mapped
  zero-copy host memory (the Nano's GPU shares DRAM with the CPU);
- the binding-index API (TensorRT 8.x: set_binding_shape, execute_async_v2) or the
  tensor-name API (8.5+, required by 10: set_input_shape, set_tensor_address,
  execute_async_v3), chosen by feature detection;
- every TensorRT and pycuda object freed while the context it was made under is current,
  also when loading fails (TensorRT#2052: else cudaFree fails, "invalid argument");
- copy in, execute and copy out asynchronously on one stream, then synchronise.

TensorFlow is never imported here.
"""

import logging
import os
import traceback

import numpy as np

from daemon import model_meta
from daemon.backends.base import Backend, BackendUnavailable, import_runtime
from daemon.tensorrt import common as trt_common

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine; ``name`` is ``tensorrt-<precision>``."""

    def __init__(
        self, engine_path, onnx_path=None, max_batch=32, rebuild_stale=False, zero_copy=False, device_index=0
    ):
        self.engine_path = str(engine_path)
        self.onnx_path = str(onnx_path) if onnx_path else None
        self.requested_max_batch = max_batch
        self.rebuild_stale = rebuild_stale
        self.zero_copy = zero_copy
        self.device_index = device_index
        self.name = "tensorrt"
        self.api = None  # "binding" (TensorRT 8.x) or "tensor" (8.5+ / 10)
        self.cuda_context = None
        self._trt = None
        self._cuda = None
        self._runtime = None
        self._engine = None
        self._context = None
        self._stream = None
        self._host_in = self._host_out = None
        self._device_in = self._device_out = None
        self._input_name = self._output_name = None
        self._input_index = self._output_index = None
        self._sample_shape = None
        self._classes = None

    # -- loading -----------------------------------------------------------------------------
    def load(self):
        trt = import_runtime("tensorrt", trt_common.JETPACK_HINT)
        cuda = import_runtime("pycuda.driver", "pycuda is not installed (pip3 install pycuda)")
        self._trt, self._cuda = trt, cuda
        try:
            cuda.init()
            device = cuda.Device(self.device_index)
            flags = cuda.ctx_flags.MAP_HOST if self.zero_copy else 0
            self.cuda_context = device.make_context(flags)  # also makes it current
        except cuda.Error as exc:
            raise BackendUnavailable(
                "cannot create a CUDA context on device %d: %s" % (self.device_index, exc)
            ) from exc
        try:
            meta = self._checked_metadata()
            self._deserialize(meta)
            self._allocate()
        except (BackendUnavailable, cuda.Error, RuntimeError, TypeError, ValueError) as exc:
            traceback.clear_frames(exc.__traceback__)  # its frames may hold the engine
            self._release()
            self.cuda_context.pop()
            self.cuda_context.detach()
            self.cuda_context = None
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable("TensorRT engine %s: %s" % (self.engine_path, exc)) from exc
        self.cuda_context.pop()
        log.info(
            "TensorRT %s: %s (%s, %s API, max batch %d%s)",
            trt.__version__,
            self.engine_path,
            self.name,
            self.api,
            self.max_batch,
            ", zero-copy" if self.zero_copy else "",
        )
        return self

    def _checked_metadata(self):
        if not os.path.isfile(self.engine_path):
            if self.rebuild_stale and self.onnx_path:
                return self._rebuild("engine %s does not exist" % self.engine_path)
            raise BackendUnavailable(
                "engine %s does not exist (run make build-engine on the Jetson)" % self.engine_path
            )
        try:
            meta = model_meta.read(self.engine_path)
            trt_common.check_engine(meta, self._trt, self._cuda, self.onnx_path, self.device_index)
        except (model_meta.ModelMetadataError, trt_common.EngineMismatch) as exc:
            if self.rebuild_stale and self.onnx_path and os.path.isfile(self.onnx_path):
                return self._rebuild(str(exc))
            raise BackendUnavailable(
                "engine %s is not usable here: %s. Run make build-engine, or set backend.rebuild_stale: true"
                % (self.engine_path, exc)
            ) from exc
        return meta

    def _rebuild(self, reason):
        from daemon.tensorrt import build as build_engine

        log.warning("rebuilding %s: %s", self.engine_path, reason)
        precision = None
        match = os.path.basename(self.engine_path).split(".")
        if len(match) >= 3 and match[-2] in build_engine.PRECISIONS:
            precision = match[-2]
        # build() runs in its own context; ours must not be current meanwhile.
        self.cuda_context.pop()
        try:
            _, meta = build_engine.build(
                self._trt,
                self._cuda,
                self.onnx_path,
                self.engine_path,
                precision,
                (1, min(8, self.requested_max_batch), self.requested_max_batch),
            )
        except build_engine.EngineBuildError as exc:
            raise BackendUnavailable("rebuilding %s failed: %s" % (self.engine_path, exc)) from exc
        finally:
            self.cuda_context.push()
        return meta

    def _deserialize(self, meta):
        trt = self._trt
        self._trt_logger = trt_common.make_trt_logger(trt)
        self._runtime = trt.Runtime(self._trt_logger)
        with open(self.engine_path, "rb") as handle:
            self._engine = self._runtime.deserialize_cuda_engine(handle.read())
        if self._engine is None:
            raise BackendUnavailable(
                "TensorRT could not deserialize %s (see TensorRT errors above)" % self.engine_path
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable("TensorRT could not create an execution context (out of GPU memory?)")
        engine = self._engine
        if hasattr(engine, "num_io_tensors") and hasattr(self._context, "execute_async_v3"):
            self.api = "tensor"
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            self._check_io(inputs, outputs)
            self._input_name, self._output_name = inputs[0], outputs[0]
            profile_max = engine.get_tensor_profile_shape(self._input_name, 0)[2]
            input_shape = engine.get_tensor_shape(self._input_name)
            output_shape = engine.get_tensor_shape(self._output_name)
            self._in_dtype = trt.nptype(engine.get_tensor_dtype(self._input_name))
            self._out_dtype = trt.nptype(engine.get_tensor_dtype(self._output_name))
        else:
            self.api = "binding"
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            inputs = [n for i, n in enumerate(names) if engine.binding_is_input(i)]
            outputs = [n for i, n in enumerate(names) if not engine.binding_is_input(i)]
            self._check_io(inputs, outputs)
            self._input_name, self._output_name = inputs[0], outputs[0]
            self._input_index = engine.get_binding_index(self._input_name)
            self._output_index = engine.get_binding_index(self._output_name)
            profile_max = engine.get_profile_shape(0, self._input_index)[2]
            input_shape = engine.get_binding_shape(self._input_index)
            output_shape = engine.get_binding_shape(self._output_index)
            self._in_dtype = trt.nptype(engine.get_binding_dtype(self._input_index))
            self._out_dtype = trt.nptype(engine.get_binding_dtype(self._output_index))
        self._sample_shape = tuple(int(d) for d in input_shape[1:])
        self._classes = int(output_shape[-1])
        self.max_batch = min(int(profile_max[0]), self.requested_max_batch)
        self.name = "tensorrt-%s" % meta.get("precision", "fp16")

    def _check_io(self, inputs, outputs):
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendUnavailable(
                "expected one input and one output, engine has %s -> %s" % (inputs, outputs)
            )

    def _allocate(self):
        cuda = self._cuda
        in_count = self.max_batch * int(np.prod(self._sample_shape))
        out_count = self.max_batch * self._classes
        if self.zero_copy:
            flags = cuda.host_alloc_flags.DEVICEMAP
            self._host_in = cuda.pagelocked_empty(in_count, self._in_dtype, mem_flags=flags)
            self._host_out = cuda.pagelocked_empty(out_count, self._out_dtype, mem_flags=flags)
            self._device_in = self._host_in.base.get_device_pointer()
            self._device_out = self._host_out.base.get_device_pointer()
        else:
            self._host_in = cuda.pagelocked_empty(in_count, self._in_dtype)
            self._host_out = cuda.pagelocked_empty(out_count, self._out_dtype)
            self._device_in = cuda.mem_alloc(self._host_in.nbytes)
            self._device_out = cuda.mem_alloc(self._host_out.nbytes)
        self._stream = cuda.Stream()
        if self.api == "tensor":
            self._context.set_tensor_address(self._input_name, int(self._device_in))
            self._context.set_tensor_address(self._output_name, int(self._device_out))

    # -- inference -----------------------------------------------------------------------------
    def infer(self, batch):
        """float32 [N,28,28,1] (N <= max_batch) -> probabilities [N,10]."""
        count = len(batch)
        if count > self.max_batch:
            raise ValueError("batch of %d exceeds the engine's %d" % (count, self.max_batch))
        shape = (count,) + self._sample_shape
        in_size = count * int(np.prod(self._sample_shape))
        out_size = count * self._classes
        host_in = self._host_in[:in_size]
        host_out = self._host_out[:out_size]
        host_in[:] = np.asarray(batch, dtype=self._in_dtype).reshape(-1)
        cuda = self._cuda
        self.cuda_context.push()
        try:
            if not self.zero_copy:
                cuda.memcpy_htod_async(self._device_in, host_in, self._stream)
            if self.api == "tensor":
                if not self._context.set_input_shape(self._input_name, shape):
                    raise RuntimeError("TensorRT rejected input shape %s" % (shape,))
                ok = self._context.execute_async_v3(stream_handle=self._stream.handle)
            else:
                if not self._context.set_binding_shape(self._input_index, shape):
                    raise RuntimeError("TensorRT rejected input shape %s" % (shape,))
                bindings = [0] * self._engine.num_bindings
                bindings[self._input_index] = int(self._device_in)
                bindings[self._output_index] = int(self._device_out)
                ok = self._context.execute_async_v2(bindings=bindings, stream_handle=self._stream.handle)
            if not ok:
                raise RuntimeError("TensorRT execution failed (see TensorRT errors above)")
            if not self.zero_copy:
                cuda.memcpy_dtoh_async(host_out, self._device_out, self._stream)
            self._stream.synchronize()
        finally:
            self.cuda_context.pop()
        return np.array(host_out, dtype=np.float32).reshape(count, self._classes)

    # -- shutdown ------------------------------------------------------------------------------
    def close(self):
        """Free buffers, context, engine and runtime in that order, then the CUDA context."""
        if self.cuda_context is None:
            return
        self.cuda_context.push()
        self._release()
        self.cuda_context.pop()
        self.cuda_context.detach()
        self.cuda_context = None

    def _release(self):
        """Free what exists; the CUDA context must be current."""
        if self._stream is not None:
            self._stream.synchronize()
        if not self.zero_copy:
            for allocation in (self._device_in, self._device_out):
                if allocation is not None:
                    allocation.free()
        for host in (self._host_in, self._host_out):
            if host is not None and host.base is not None:
                host.base.free()
        self._device_in = self._device_out = self._host_in = self._host_out = None
        self._stream = None
        self._context = None  # execution context before engine before runtime
        self._engine = None
        self._runtime = None
