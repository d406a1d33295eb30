"""The gRPC server (extra `server`): model repository, batching, onnxruntime inference; no TensorFlow."""
