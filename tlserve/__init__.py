"""tlserve: transfer-learning text classification from pretrained word vectors, served over gRPC.

The package is split by role so each install stays light:

- ``tlserve.client`` (base install): the gRPC stubs and a small typed client.
- ``tlserve.server`` (extra ``server``): the gRPC service over onnxruntime; never imports TensorFlow.
- ``tlserve.trainer`` (extra ``trainer``): vector import, training, ONNX export, reports.
- shared by trainer and server: ``tlserve.preprocessing``, ``tlserve.vector_store``,
  ``tlserve.features`` and ``tlserve.bundle``.
"""

__version__ = "0.1.0"
