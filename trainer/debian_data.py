"""Debian's package descriptions, labelled by archive section: two evaluation sets and a French store.

Debian's archive index, read with apt's own client (``apt-get update`` into a folder of ours,
``apt-helper cat-file`` to decompress), describes every package of the release: ``Packages``
gives each package's section and its one-line English synopsis, ``Translation-fr`` the French
description (synopsis and long description) that the Debian Description Translation Project
made of it, matched by ``Description-md5``. The section says what the software is for, so:

- ``debian-synopsis``: English synopses ("command-line tool to ..."), a few words each, in 24
  sections: short, query-like texts over many topics;
- ``debian-fr``: French descriptions in the same sections: a language the other sets lack.

Only sections that name what the software does are kept (``net``, ``sound``, ``science``,
...); sections that name a packaging kind (``libs``, ``doc``, ``debug``) or a language's
ecosystem (``python``, ``rust``) are not topics. A text listed under two sections is dropped.

No registry ships French word vectors, so word2vec is trained here, as for Chinese, on French
text the registries do ship and that is not in the task: Debian's French manual pages and
manuals, and the French descriptions of the packages outside the task's sections.
"""

from __future__ import annotations

import gzip
import logging
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tlserve.trainer.registry_data import apt_download, roff_text, word2vec_store, write_csv, write_lines

_LOGGER = logging.getLogger(__name__)

SECTIONS = ("admin", "comm", "database", "devel", "editors", "electronics", "fonts", "games", "graphics",
            "hamradio", "httpd", "interpreters", "mail", "math", "net", "science", "sound", "tex", "text", "utils",
            "vcs", "video", "web", "x11")
FR_DEBS = ("manpages-fr", "debian-reference-fr", "developers-reference-fr", "maint-guide-fr", "debian-faq-fr")
FR_STORE_DIMENSION = 100
_MARKUP = re.compile(r"<[^>]+>")


def _index_files(root: Path) -> dict[str, Path]:
    """The release's ``Packages`` and ``Translation-fr`` (decompressed) under root/downloads/debian-index."""
    folder = root / "downloads" / "debian-index"
    wanted = {"Packages": folder / "Packages", "Translation-fr": folder / "Translation-fr",
              "Release": folder / "Release"}
    if all(path.is_file() for path in wanted.values()):
        return wanted
    lists = folder / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "-q", "-o", f"Dir::State::Lists={lists}", "-o", "Acquire::Languages=en,fr",
                    "update"], check=True, stdout=subprocess.DEVNULL)
    # The release itself ("bookworm"), not its updates or security suites.
    release = next(p for p in sorted(lists.glob("*_dists_*_InRelease")) if p.name.count("_dists_") and
                   "-" not in p.name.split("_dists_")[1].split("_")[0])
    suite = release.name.split("_dists_")[1].split("_")[0]
    sources = {"Packages": f"_dists_{suite}_main_binary-", "Translation-fr": f"_dists_{suite}_main_i18n_Translation-fr"}
    for name, marker in sources.items():
        source = next(p for p in lists.iterdir() if marker in p.name and "debian-security" not in p.name)
        with open(wanted[name], "wb") as handle:
            subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(source)], check=True, stdout=handle)
    wanted["Release"].write_bytes(release.read_bytes())
    return wanted


def _stanzas(path: Path) -> Iterator[dict[str, str]]:
    """The RFC 822-style stanzas of a Debian index file (continuation lines kept, leading space removed)."""
    fields: dict[str, str] = {}
    key = ""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                if fields:
                    yield fields
                fields, key = {}, ""
            elif line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line[1:]
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
    if fields:
        yield fields


def _section(fields: dict[str, str]) -> str:
    return fields.get("Section", "").rsplit("/", 1)[-1]  # "contrib/net" -> "net"


def _description(text: str) -> str:
    """A description as one line: the synopsis and the paragraphs, without the lone-dot paragraph marks."""
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line and line != ".")


def _unambiguous(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(text, label) pairs, one per text, in first-seen order; texts seen under two labels dropped."""
    labels: dict[str, set[str]] = {}
    for text, label in pairs:
        labels.setdefault(text, set()).add(label)
    return [(text, next(iter(found))) for text, found in labels.items() if len(found) == 1]


def debian_tasks(root: Path) -> tuple[Path, Path, Path]:
    """The English-synopsis task, the French task and the French corpus outside the task."""
    synopsis_task = root / "tasks" / "debian-synopsis.csv"
    french_task = root / "tasks" / "debian-fr.csv"
    corpus = root / "corpora" / "fr-registry-text.txt"
    if synopsis_task.is_file() and french_task.is_file() and corpus.is_file():
        return synopsis_task, french_task, corpus
    files = _index_files(root)
    synopses, french, outside = section_sets(files["Packages"], files["Translation-fr"])
    _LOGGER.info("Debian sections: %d English synopses, %d French descriptions (%s)", len(synopses), len(french),
                 ", ".join(f"{k} {v}" for k, v in Counter(label for _, label in french).most_common(5)))
    write_csv(synopsis_task, synopses)
    write_csv(french_task, french)
    return synopsis_task, french_task, fr_corpus(root, outside)


def section_sets(packages: Path, translation: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """(synopsis, section) and (French description, section) pairs of the task's sections, each text once and
    under one section, and the French descriptions of the packages outside them."""
    section_of_md5: dict[str, str] = {}
    synopses: list[tuple[str, str]] = []
    for fields in _stanzas(packages):
        section = _section(fields)
        section_of_md5.setdefault(fields.get("Description-md5", ""), section)
        if section in SECTIONS and fields.get("Description"):
            synopses.append((fields["Description"].splitlines()[0].strip(), section))
    french: list[tuple[str, str]] = []
    outside: list[str] = []
    for fields in _stanzas(translation):
        text = _description(fields.get("Description-fr", ""))
        known = section_of_md5.get(fields.get("Description-md5", ""))
        if not text or known is None:
            continue
        if known in SECTIONS:
            french.append((text, known))
        else:
            outside.append(text)
    return _unambiguous(synopses), _unambiguous(french), outside


def fr_corpus(root: Path, descriptions: list[str]) -> Path:
    """French text outside the task: manual pages, Debian's French manuals, other packages' descriptions."""
    corpus = root / "corpora" / "fr-registry-text.txt"
    downloads = root / "downloads"
    texts = list(descriptions)
    manpages = apt_download(FR_DEBS[0], downloads)
    for page in sorted((manpages / "usr" / "share" / "man" / "fr").rglob("*.gz")):
        texts.extend(roff_text(gzip.decompress(page.read_bytes()).decode("utf-8", "replace")))
    for package in FR_DEBS[1:]:
        folder = apt_download(package, downloads)
        for text_file in sorted(folder.rglob("*.txt*")):
            raw = text_file.read_bytes()
            text = (gzip.decompress(raw) if text_file.suffix == ".gz" else raw).decode("utf-8", "replace")
            texts.extend(_MARKUP.sub(" ", line) for line in text.splitlines())
    return write_lines(corpus, texts)


def fr_vectors(root: Path) -> Path:
    """Word2vec (gensim, CBOW, 100 dimensions) on the French corpus, as a store."""
    _, _, corpus = debian_tasks(root)
    return word2vec_store(corpus, root / "stores" / "fr-registry-w2v-100d", root / "downloads", "latin",
                          FR_STORE_DIMENSION)
