"""The serving core: protocol-free classification behind every front end.

A front end (native gRPC, the Open Inference Protocol, HTTP) turns its request into texts
and a model reference, calls `DataPlane.predict`, and turns the `Answer` or the
`ServingError` back into its protocol. Nothing here imports gRPC or generated stubs:

- `dataplane`: request limits, routing to a served version, the batcher, the answer;
- `batching`: dynamic batching per model version, over a `tlserve.scorer.Scorer`;
- `lifecycle`: repository scan, load, verify and warm, swap in, unload;
- `routing`: the table of served versions;
- `observe` and `metrics`: call and batch observation, Prometheus metrics;
- `errors`: the one error type, with a protocol-neutral code;
- `loop_idle`: the event loop's idle signal that drives batching.
"""
