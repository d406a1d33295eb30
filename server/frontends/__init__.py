"""Front ends: thin converters between a wire protocol and the serving core (`DataPlane.classify`).

- `grpc/`: tlserve.v1.Classifier (`native`, its responses written by `wire`), the Open Inference
  Protocol (`oip`, its responses built by `oip_messages`), what both share (`requests`: tolerant
  parsing; `common`: registration and the one mapping from `ServingError` to a gRPC status) and
  transport security (`security`);
- `http/`: the JSON mirror of tlserve.v1 (`native`), the Open Inference Protocol's REST binding
  (`oip`), their bodies and answers (`body`, `answers`, `json_bodies`), the status page (`page`),
  the application and its limits (`app`, `common`, `connections`), the OpenAPI document (`openapi`);
- beside them, what both protocols' front ends share: tlserve.v1 messages (`native_messages`),
  the Open Inference Protocol's tensors (`oip_tensors` in, `oip_answers` out), and the metrics
  port (`metrics_port`).

The gRPC and HTTP front ends never import each other (an import contract checks it).
"""
