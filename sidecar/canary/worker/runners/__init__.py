"""What the canary worker runs. Imported only inside the worker process: the runner modules
import CUDA, TensorRT or ONNX Runtime lazily, and the serving process never imports them."""
