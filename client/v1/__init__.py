"""tlserve's gRPC stubs under the client's name: `tlserve.client.v1.classifier_pb2` and `_grpc`.

The stubs live in the contract package (`tlserve.contract.v1`); this package re-exports
its modules, so code written against `tlserve.client.v1` keeps working and both names
refer to the same module objects (one set of registered protobuf messages).
"""

import sys

from tlserve.contract.v1 import classifier_pb2, classifier_pb2_grpc

# `from tlserve.client.v1.classifier_pb2 import X` resolves through sys.modules.
sys.modules[__name__ + ".classifier_pb2"] = classifier_pb2
sys.modules[__name__ + ".classifier_pb2_grpc"] = classifier_pb2_grpc

__all__ = ["classifier_pb2", "classifier_pb2_grpc"]
