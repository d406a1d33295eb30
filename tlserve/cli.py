"""The `tlserve` command line: one entry point, one verb per job.

Each verb's arguments are declared by a light module of its role, and its heavy imports
(TensorFlow for `train`, onnxruntime for `serve`) happen only when that verb runs, so
`tlserve classify` starts in a fraction of a second and never loads the trainer.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tlserve import __version__
from tlserve.core.errors import TlserveError


class _Version(argparse.Action):
    """`--version`: the version and which encoder makes features here (imported only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from tlserve.core.encoders import chosen_encoder, compiled_available

        built = "compiled encoder installed" if compiled_available() else "no compiled encoder (pure-Python install)"
        print(f"tlserve {__version__}; encoder: {chosen_encoder()} ({built})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from tlserve.bench import commands as bench_commands
    from tlserve.client import commands as client_commands
    from tlserve.offline import commands as scoring_commands
    from tlserve.server import commands as server_commands
    from tlserve.trainer import commands as trainer_commands

    parser = argparse.ArgumentParser(
        prog="tlserve",
        description="Transfer-learning text classification: train from pretrained word vectors, serve over gRPC.",
    )
    parser.add_argument("--version", action=_Version, help="show tlserve's version and the encoder it runs, and exit")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    trainer_commands.register(verbs)
    server_commands.register(verbs)
    client_commands.register(verbs)
    scoring_commands.register(verbs)
    bench_commands.register(verbs)
    return parser


# The extra each verb needs beyond the client, for the one-line answer when it is missing.
EXTRA_OF_VERB = {"serve": "server", "test": "server", "predict": "server", "score": "scoring", "train": "trainer",
                 "evaluate": "trainer", "vectors": "trainer", "data": "trainer", "bench": "dev", "soak": "dev",
                 "request-path": "server"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_VERB.get(args.verb)
        if extra is None or (exc.name or "tlserve").split(".")[0] == "tlserve":
            raise
        print(f"tlserve {args.verb}: needs the {extra} extra ({exc.name} is not installed): "
              f"pip install 'tlserve[{extra}]'", file=sys.stderr)
        return 2
    except TlserveError as exc:
        print(f"tlserve {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"tlserve {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or a job's own stop on a signal (128 + its number)
        return 128 + int(getattr(exc, "signum", 2))


if __name__ == "__main__":
    sys.exit(main())
