"""Front ends: thin converters between a wire protocol and the serving core.

- `grpc_native`: tlserve.v1.Classifier (responses written by `wire`);
- `grpc_oip`: the Open Inference Protocol (KServe V2) over gRPC;
- `grpc_common`: what both gRPC services share: tolerant request parsing, deadlines and the
  one mapping from `ServingError` to a gRPC status;
- `security`: TLS credentials and the bearer-token interceptor.
"""
