"""The serving core: protocol-free classification behind every front end.

A front end (native gRPC, the Open Inference Protocol, HTTP) parses its request into a
`ClassifyCall`, calls `DataPlane.classify` with its own encoder, and gets the encoded answer
back, or a `ServingError` to turn into its protocol's status. Nothing here imports gRPC,
aiohttp or generated stubs:

- `dataplane`: the one entry of a call: routing, the batcher, the payload log, ranking, observation;
- `batching` (execution), `batch_policy` (which chunks form a batch), `batch_requests` (splitting
  calls into chunks, predictions back into calls): dynamic batching per model version;
- `limits`: a request's count and size limits, and reading its texts;
- `streams`: how far a stream reads ahead of what its client has taken;
- `lifecycle`: repository scan, load, verify and warm, swap in, unload;
- `routing`: the table of served versions;
- `observe`, `metrics`, `stats`, `tracing`: call and batch observation, Prometheus metrics, traces;
- `errors`: the one error type, with a protocol-neutral code;
- `loop_idle`: the event loop's idle signal that drives batching; `allocator`: memory back after bursts.
"""
