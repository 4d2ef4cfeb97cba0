"""The canary worker: the child process only (``python -m sidecar.canary.worker``).

Everything that touches CUDA, TensorRT or ONNX Runtime lives here; the serving side talks to it
over the line protocol in :mod:`sidecar.canary.protocol` and never imports this package.
"""
