"""Simulated pycuda.driver: contexts per thread, device memory as host buffers, queued streams."""

import itertools
import os
import threading
import weakref

import numpy as np

_state = threading.local()
_memory = {}  # device address -> uint8 numpy buffer
_memory_lock = threading.Lock()
_addresses = itertools.count(0x7F0000000000, 0x100000)
_initialised = [False]
_streams = weakref.WeakValueDictionary()  # handle -> Stream, as long as the Stream lives
lifetime_errors = []  # teardown faults seen (tests assert it stays empty), like TensorRT#2052


class Error(Exception):
    pass


class LogicError(Error):
    pass


class MemoryError(Error):  # noqa: A001 - pycuda's own name
    pass


class ctx_flags(object):  # noqa: N801
    SCHED_AUTO = 0
    MAP_HOST = 8


class host_alloc_flags(object):  # noqa: N801
    PORTABLE = 1
    DEVICEMAP = 2
    WRITECOMBINED = 4


def init(flags=0):
    _initialised[0] = True


def _stack():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _require_context(call):
    if not _initialised[0]:
        raise LogicError("%s failed: initialization error (cuda.init() not called)" % call)
    stack = _stack()
    if not stack or stack[-1].detached:
        raise LogicError("%s failed: invalid device context" % call)
    return stack[-1]


class Device(object):
    def __init__(self, index):
        if not _initialised[0]:
            raise LogicError("cuDeviceGet failed: initialization error")
        if index != 0:
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.index = index

    @staticmethod
    def count():
        return 1

    def name(self):
        return os.environ.get("DIGITD_SIM_GPU", "NVIDIA Tegra X1")

    def compute_capability(self):
        major, minor = os.environ.get("DIGITD_SIM_SM", "5.3").split(".")
        return int(major), int(minor)

    def total_memory(self):
        return 4 * 1024**3

    def make_context(self, flags=0):
        context = Context(self, flags)
        _stack().append(context)
        return context


class Context(object):
    live = []
    all_made = []

    def __init__(self, device, flags):
        self.device = device
        self.flags = flags
        self.detached = False
        self.owner = threading.current_thread()
        self.number = len(Context.all_made)
        Context.all_made.append(self)
        Context.live.append(self)

    def __repr__(self):
        return "context %d%s" % (self.number, " (destroyed)" if self.detached else "")

    def push(self):
        if self.detached:
            raise LogicError("cuCtxPushCurrent failed: context is destroyed")
        _stack().append(self)

    def pop(self):
        stack = _stack()
        if not stack:
            raise LogicError("cuCtxPopCurrent failed: invalid context")
        stack.pop()

    def detach(self):
        if self in _stack():
            raise LogicError("cuCtxDestroy: context still current in this thread; pop it first")
        self.detached = True
        Context.live.remove(self)

    @staticmethod
    def get_current():
        stack = _stack()
        return stack[-1] if stack else None

    def synchronize(self):
        _require_context("cuCtxSynchronize")


def check_tensorrt_release(created_in, what):
    """TensorRT frees GPU memory through the CUDA runtime in whatever context is current: an object
    created under a context must be released while that context is current, else cudaFree fails."""
    if created_in is None:
        return
    current = Context.get_current()
    if current is created_in and not created_in.detached:
        return
    error = LogicError(
        "[defaultAllocator.cpp::deallocate::42] Error Code 1: Cuda Runtime (invalid argument): "
        "%s released with %s current, created under %s"
        % (what, "no context" if current is None else current, created_in)
    )
    lifetime_errors.append(str(error))
    raise error


def check_pycuda_release(created_in, what):
    """pycuda activates an allocation's own context to free it, which fails once that context is
    destroyed (detached) or when it lives in another thread."""
    if created_in is None:
        return
    if created_in.detached:
        reason = "context is destroyed"
    elif Context.get_current() is not created_in and threading.current_thread() is not created_in.owner:
        reason = "cannot activate out-of-thread context"
    else:
        return
    error = LogicError(
        "%s failed: %s (PyCUDA WARNING: a clean-up operation failed (dead context maybe?))" % (what, reason)
    )
    lifetime_errors.append(str(error))
    raise error


def _register(buffer):
    address = next(_addresses)
    with _memory_lock:
        _memory[address] = buffer
    return address


def device_view(address, nbytes):
    """The simulator's 'GPU' reading memory at an address (used by the tensorrt stand-in)."""
    with _memory_lock:
        for base, buffer in _memory.items():
            if base <= address and address + nbytes <= base + buffer.nbytes:
                offset = address - base
                return buffer[offset : offset + nbytes]
    raise LogicError("illegal memory access at 0x%x (%d bytes)" % (address, nbytes))


class DeviceAllocation(object):
    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.address = _register(np.zeros(nbytes, np.uint8))
        self.freed = False
        self.created_in = Context.get_current()

    def __int__(self):
        if self.freed:
            raise LogicError("use of freed device memory")
        return self.address

    __index__ = __int__

    def free(self):
        _require_context("cuMemFree")
        check_pycuda_release(self.created_in, "cuMemFree")
        with _memory_lock:
            _memory.pop(self.address, None)
        self.freed = True

    def __del__(self):
        if not self.freed:  # pycuda frees in its destructor, in the allocation's own context
            self.freed = True
            check_pycuda_release(self.created_in, "cuMemFree")


def mem_alloc(nbytes):
    _require_context("cuMemAlloc")
    if nbytes <= 0:
        raise LogicError("cuMemAlloc failed: invalid argument")
    return DeviceAllocation(int(nbytes))


class HostAllocation(object):
    """The .base of a page-locked array, like pycuda's PagelockedHostAllocation."""

    def __init__(self, shape, dtype, mem_flags):
        self._buffer = np.zeros(int(np.prod(shape)) * np.dtype(dtype).itemsize, np.uint8)
        self.mem_flags = mem_flags
        self.context = Context.get_current()
        self.freed = False
        self.__array_interface__ = {
            "shape": tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),),
            "typestr": np.dtype(dtype).str,
            "data": (self._buffer.ctypes.data, False),
            "version": 3,
        }
        self._device_address = None

    def get_device_pointer(self):
        if not self.mem_flags & host_alloc_flags.DEVICEMAP:
            raise LogicError("cuMemHostGetDevicePointer failed: memory not mapped (use DEVICEMAP)")
        if self.context is None or not self.context.flags & ctx_flags.MAP_HOST:
            raise LogicError("cuMemHostGetDevicePointer failed: context lacks MAP_HOST")
        if self._device_address is None:
            self._device_address = _register(self._buffer)
        return self._device_address

    def free(self):
        check_pycuda_release(self.context, "cuMemFreeHost")
        if self._device_address is not None:
            with _memory_lock:
                _memory.pop(self._device_address, None)
        self.freed = True


def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
    _require_context("cuMemHostAlloc")
    return np.asarray(HostAllocation(shape, dtype, mem_flags))


def pagelocked_zeros(shape, dtype, order="C", mem_flags=0):
    return pagelocked_empty(shape, dtype, order, mem_flags)


class Stream(object):
    def __init__(self, flags=0):
        _require_context("cuStreamCreate")
        self.handle = _register(np.zeros(1, np.uint8))
        self.pending = []
        self.created_in = Context.get_current()
        _streams[self.handle] = self

    def __del__(self):
        check_pycuda_release(self.created_in, "cuStreamDestroy")

    def enqueue(self, operation):
        self.pending.append(operation)

    def synchronize(self):
        _require_context("cuStreamSynchronize")
        pending, self.pending = self.pending, []
        for operation in pending:
            operation()

    def is_done(self):
        return not self.pending


def stream_from_handle(handle):
    try:
        return _streams[int(handle)]
    except KeyError:
        raise LogicError("invalid stream handle %r" % handle)


def _host_bytes(array):
    array = np.asarray(array)
    if not array.flags["C_CONTIGUOUS"]:
        raise LogicError("host buffer must be contiguous")
    return array.reshape(-1).view(np.uint8)


def memcpy_htod(dest, src):
    _require_context("cuMemcpyHtoD")
    data = _host_bytes(src)
    device_view(int(dest), data.nbytes)[:] = data


def memcpy_dtoh(dest, src):
    _require_context("cuMemcpyDtoH")
    data = _host_bytes(dest)
    data[:] = device_view(int(src), data.nbytes)


def memcpy_htod_async(dest, src, stream=None):
    _require_context("cuMemcpyHtoDAsync")
    data = _host_bytes(src)
    address = int(dest)
    device_view(address, data.nbytes)  # bounds are checked at enqueue time, like CUDA

    def copy():
        device_view(address, data.nbytes)[:] = data  # reads the host buffer when it runs

    _run_or_queue(copy, stream)


def memcpy_dtoh_async(dest, src, stream=None):
    _require_context("cuMemcpyDtoHAsync")
    data = _host_bytes(dest)
    address = int(src)
    device_view(address, data.nbytes)

    def copy():
        data[:] = device_view(address, data.nbytes)

    _run_or_queue(copy, stream)


def _run_or_queue(operation, stream):
    if stream is None:
        operation()
    else:
        stream.enqueue(operation)
