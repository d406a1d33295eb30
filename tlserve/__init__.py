"""tlserve: transfer-learning text classification from pretrained word vectors, served over gRPC.

The package is split by role so each install stays light:

- ``tlserve.client`` (base install): the gRPC stubs (``tlserve.contract``) and a small typed client.
- ``tlserve.server`` (extra ``server``): the gRPC and HTTP services over onnxruntime; never imports TensorFlow.
- ``tlserve.trainer`` (extra ``trainer``): vector import, training, ONNX export, reports.
- ``tlserve.offline`` (extra ``scoring``): scoring, testing and predicting from files, without a server.
- ``tlserve.core``: what they share (preprocessing, features, the vector store, the bundle, the scorer).
"""

__version__ = "0.1.0"
