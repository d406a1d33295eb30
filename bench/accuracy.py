"""The accuracy table: `tlserve evaluate` on every task and label budget, 5 seeded splits each.

    python -m tlserve.bench.accuracy                 # every row missing from bench/results/accuracy/
    python -m tlserve.bench.accuracy --rows wordnet-1 spam-10
    python -m tlserve.bench.accuracy --table         # only rebuild the Markdown table from the results
    python -m tlserve.bench.accuracy --rows ... --rerun tlserve        # rerun tlserve, keep the peers' figures
    python -m tlserve.bench.accuracy --rows ... --rerun tfidf_word_char  # add or rerun one peer

Each row is one `tlserve evaluate` run in its own process (its JSON and Markdown land in
the results folder, and each finished split is kept until the row is written, so an interrupted
sweep resumes at the split where it stopped). `--rerun` runs only the
named systems (``tlserve`` for tlserve's modes, or peers by name) on the same seeded splits and
keeps the other systems' recorded figures (no system sees another's settings; the splits are
checked to be the same). Rows:

- tasks x label budgets: WordNet 1/10/100 %, SpamAssassin 10/100 %, Rotten Tomatoes reviews
  10/100 %, THUCNews headlines (Chinese, jieba, vectors trained with gensim) 10/100 %, Debian
  package synopses by section (short English texts, 24 classes) 10/100 %, Debian's French package
  descriptions by section (French vectors trained with gensim) 10/100 %;
- long texts: SpamAssassin 10 % with the old 256-token cap (the default keeps 4,096);
- domain adaptation: WordNet 1 % and reviews 10 % on vectors continued with
  `tlserve vectors adapt` on unlabelled in-domain text that is not in the task (WordNet glosses
  of the other categories; the reviewed movies' plot summaries).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from tlserve.trainer.config import PEERS

_LOGGER = logging.getLogger(__name__)

RESULTS = Path("bench/results/accuracy")


def rows(data: Path) -> dict[str, list[str]]:
    """Row name -> `tlserve evaluate` arguments (without --out)."""
    glove, zh = data / "stores" / "glove-6b-50d", data / "stores" / "zh-registry-w2v-100d"
    wordnet, spam = data / "tasks" / "wordnet-nouns-top10.csv", data / "tasks" / "spam-assassin.csv"
    reviews, news = data / "tasks" / "rt-reviews.csv", data / "tasks" / "thucnews-headlines.csv"
    synopses, french = data / "tasks" / "debian-synopsis.csv", data / "tasks" / "debian-fr.csv"
    out: dict[str, list[str]] = {}
    for name, task, store, extra in (("wordnet", wordnet, glove, []), ("spam", spam, glove, []),
                                     ("reviews", reviews, glove, []),
                                     ("news-zh", news, zh, ["--tokenizer", "jieba"]),
                                     ("debian-synopsis", synopses, glove, []),
                                     ("debian-fr", french, data / "stores" / "fr-registry-w2v-100d", [])):
        fractions = ("1", "10", "100") if name == "wordnet" else ("10", "100")
        for percent in fractions:
            out[f"{name}-{percent}"] = ["--data", str(task), "--vectors", str(store), "--train-fraction",
                                        str(int(percent) / 100), *extra]
    out["spam-10-cap256"] = [*out["spam-10"], "--max-tokens", "256", "--peers"]
    out["wordnet-1-adapted"] = [*out["wordnet-1"], "--vectors", str(data / "stores" / "glove-6b-50d-wordnet-adapted")]
    out["reviews-10-adapted"] = [*out["reviews-10"], "--vectors", str(data / "stores" / "glove-6b-50d-rt-adapted")]
    return out


def adapted_stores(data: Path) -> None:
    """The adapted stores the adaptation rows use (built once)."""
    glove = data / "stores" / "glove-6b-50d"
    for name, corpus in (("wordnet", data / "corpora" / "wordnet-other-glosses.txt"),
                         ("rt", data / "corpora" / "rt-plots.txt")):
        out = data / "stores" / f"glove-6b-50d-{name}-adapted"
        if not out.is_dir():
            subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "vectors", "adapt",
                            "--vectors", str(glove), "--corpus", str(corpus), "--out", str(out)], check=True)


def merge(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The systems of `new` beside the other systems of `old`, a run on the same seeded splits."""
    from tlserve.trainer.evaluate import summarize

    if new["train_fraction"] != old["train_fraction"]:
        raise ValueError("the recorded run used another label budget")
    reads_vectors = any(name.startswith("tlserve_") or name == "fasttext_vectors"
                        for split in new["splits"] for name in split["systems"])
    if reads_vectors and new["store"] != old["store"]:
        raise ValueError("the recorded run used other vectors (a store rebuilt since?): rerun every system")
    new_splits = {split["seed"]: split for split in new["splits"]}
    for split in old["splits"]:
        fresh = new_splits.get(split["seed"])
        if fresh is None or fresh["examples"] != split["examples"]:
            raise ValueError(f"split {split['seed']}: not the split the recorded systems were scored on")
        split["systems"].update(fresh["systems"])
    # tlserve run beside peers recorded alone: the run names the default they are compared with.
    old["default"] = new["default"] or old["default"]
    old["summary"] = summarize(old["splits"], old["default"])
    return old


def table(results: Path) -> str:
    """Markdown: one line per row, mean +- sd accuracy of each system, ECE and seconds of the default."""
    systems = ["tlserve_finetune", "tlserve_frozen", "tfidf_logreg", "tfidf_word_char", "fasttext", "fasttext_vectors"]
    lines = ["| row | train texts | " + " | ".join(systems) + " | default - best peer (ahead) | ECE default / "
             "best peer | seconds default / fastText+vectors |",
             "|---" * (len(systems) + 5) + "|"]
    order = list(rows(Path("data")))

    def place(path: Path) -> tuple[int, str]:
        return (order.index(path.stem) if path.stem in order else len(order), path.stem)

    paths = sorted(results.glob("*.json"), key=place)
    for path in paths:
        result: dict[str, Any] = json.loads(path.read_text())
        summary, paired = result["summary"]["systems"], result["summary"]["paired"]
        cells = []
        for name in systems:
            scores = summary.get(name)
            cells.append(f"{scores['accuracy']['mean']:.4f} +- {scores['accuracy']['sd']:.4f}" if scores else "-")
        default = summary[result["default"]]
        train_texts = result["splits"][0]["examples"]["train"]
        if paired:
            best = summary[paired["best_peer"]]
            gap = f"{paired['mean']:+.4f} +- {paired['sd']:.4f} ({paired['ahead']}/{paired['splits']})"
            ece = f"{default['ece']['mean']:.3f} / {best['ece']['mean']:.3f}"
        else:
            gap, ece = "-", f"{default['ece']['mean']:.3f} / -"
        fasttext = summary.get("fasttext_vectors")
        seconds = f"{default['seconds']['mean']:.0f} / {fasttext['seconds']['mean']:.0f}" if fasttext else \
            f"{default['seconds']['mean']:.0f} / -"
        lines.append(f"| {path.stem} | {train_texts} | " + " | ".join(cells) + f" | {gap} | {ece} | {seconds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--rows", nargs="*", help="rows to run (default: every row without a result)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    parser.add_argument("--rerun", nargs="+", choices=["tlserve", *PEERS],
                        help="run only these systems and keep the others' figures recorded for the row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.table:
        subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "data", "--root",
                        str(args.data), "--tasks", "wordnet", "spam", "reviews", "news-zh", "debian",
                        "wordnet-corpus"],
                       check=True)
        adapted_stores(args.data)
        all_rows = rows(args.data)
        for name in args.rows or list(all_rows):
            out = args.results / f"{name}.json"
            if out.is_file() and not args.rows:
                continue
            _LOGGER.info("row %s", name)
            target = out.with_name(f"{name}.rerun.json") if args.rerun else out
            only = []
            if args.rerun:
                only = ["--peers", *(p for p in args.rerun if p != "tlserve")]
                if "tlserve" not in args.rerun:
                    only.append("--no-modes")
            subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "INFO", "evaluate",
                            *all_rows[name], "--repeats", str(args.repeats), "--out", str(target), *only],
                           check=True)
            if args.rerun:
                from tlserve.trainer.evaluate import write

                write(merge(json.loads(target.read_text()), json.loads(out.read_text())), out)
                target.unlink()
                target.with_suffix(".md").unlink()
    markdown = table(args.results)
    (args.results / "table.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
