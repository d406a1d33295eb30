"""Arguments of the client's verbs: `classify`, `models` and `health`. Imports nothing heavy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

CLASSIFY_EXAMPLES = """examples:
  tlserve classify --model wordnet "a small domesticated feline" "a tool for cutting wood"
  cat texts.txt | tlserve classify --model wordnet --top-k 3      # one text per line
"""


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("TLSERVE_TARGET", "localhost:50051"),
                        help="server host:port [env TLSERVE_TARGET; default localhost:50051]")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    parser.add_argument("--round-robin", action="store_true", help="spread calls over every address of the name")
    parser.add_argument("--ca", help="PEM file of the CA that signed the server (enables TLS)")
    parser.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--key", help="PEM client key (mutual TLS)")
    parser.add_argument("--token", default=os.environ.get("TLSERVE_TOKEN"), help="bearer token [env TLSERVE_TOKEN]")


def register(verbs: Any) -> None:
    classify = verbs.add_parser(
        "classify", help="classify texts from arguments or stdin; prints JSON lines",
        epilog=CLASSIFY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    classify.add_argument("texts", nargs="*", help="texts to classify (default: one per line of stdin)")
    classify.add_argument("--model", required=True)
    classify.add_argument("--version", type=int, default=0, help="model version (default: newest)")
    classify.add_argument("--top-k", type=int, default=3, help="labels per text (0: all)")
    classify.add_argument("--batch", type=int, default=256, help="texts per call when reading stdin")
    classify.add_argument("--explain", type=int, default=0, metavar="N",
                          help="also the N words each top label owes most (default: 0, none)")
    _connection_arguments(classify)
    classify.set_defaults(run=_run_classify)

    models = verbs.add_parser("models", help="list the models a server serves (JSON)")
    _connection_arguments(models)
    models.set_defaults(run=_run_models)

    health = verbs.add_parser("health", help="check grpc.health.v1; exit 0 when SERVING")
    health.add_argument("--service", default="", help="health service name ('' = whole server)")
    health.add_argument("--wait", type=float, default=0.0, help="keep asking up to this many seconds")
    _connection_arguments(health)
    health.set_defaults(run=_run_health)


def _client(args: argparse.Namespace, model: str | None = None) -> Any:
    from tlserve.client import Classifier

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as handle:
            return handle.read()

    return Classifier(args.target, model=model, timeout=args.timeout, round_robin=args.round_robin,
                      root_certificates=read(args.ca), certificate_chain=read(args.cert), private_key=read(args.key),
                      token=args.token)


def _print_lines(args: argparse.Namespace, model: str | None, lines: Callable[[Any], Iterable[dict[str, Any]]]
                 ) -> int:
    """Prints each JSON object `lines(client)` yields; a server's error ends the verb with its message, exit 1."""
    from tlserve.client import ClassifierError

    with _client(args, model) as client:
        try:
            for line in lines(client):
                print(json.dumps(line, ensure_ascii=False))
        except ClassifierError as exc:
            print(f"tlserve {args.verb}: error: {exc}", file=sys.stderr)
            return 1
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    texts = args.texts
    batches = [texts] if texts else None
    if batches is None:
        lines = [line.rstrip("\n") for line in sys.stdin]
        batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]

    def results(client: Any) -> Iterator[dict[str, Any]]:
        for batch in batches:
            answers = client.classify(batch, version=args.version, top_k=args.top_k, explain=args.explain)
            for text, result in zip(batch, answers, strict=True):
                yield {"text": text, **result.to_dict()}

    return _print_lines(args, args.model, results)


def _run_models(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    return _print_lines(args, None, lambda client: (MessageToDict(info) for info in client.models()))


def _run_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.wait_until_serving(args.wait, args.service)
    print(status)
    return 0 if status == "SERVING" else 1
