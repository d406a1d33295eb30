"""The wire contract: generated stubs of protos/, installed with the base install.

- `tlserve.contract.v1`: tlserve's own API (`tlserve.v1.Classifier`), for clients and servers.
- `tlserve.contract.oip`: the Open Inference Protocol (KServe V2), for servers and for
  tests playing a third-party client. Clients that import tritonclient's own stubs must not
  import it too: both register the proto package `inference`.

Regenerate with ``python scripts/gen_protos.py`` after editing protos/.
"""
