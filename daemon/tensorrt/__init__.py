"""Everything that runs TensorRT on the Jetson (Python 3.6, TensorRT 8.2 and later).

- ``backend``: the daemon's TensorRT backend (engine + pycuda buffers);
- ``build``: ONNX -> engine on the device (``make build-engine``, and the backend's rebuild);
- ``common``: what both share (TensorRT logger, engine sidecar check).

Nothing here imports TensorFlow or anything of ``engine_build`` (the host-side training code).
"""
