"""The `tlserve` entry point: verbs listed, each importing only what it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnxruntime", "gensim", "numpy")


def test_help_lists_every_verb() -> None:
    out = subprocess.run([sys.executable, "-m", "tlserve.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for verb in ("vectors", "data", "train", "serve", "classify", "models", "health", "score"):
        assert f"    {verb}" in out


@pytest.mark.parametrize("verb", ["classify", "serve", "train", "vectors", "health", "score"])
def test_parsing_a_verb_imports_nothing_heavy(verb: str) -> None:
    code = (
        "import sys; from tlserve.cli import build_parser; p = build_parser(); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_help_documents_environment_variables() -> None:
    out = subprocess.run([sys.executable, "-m", "tlserve.cli", "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "TLSERVE_MAX_BATCH_SIZE" in out and "TLSERVE_REPOSITORY" in out


def test_bad_setting_names_the_variable(tmp_path: object) -> None:
    result = subprocess.run([sys.executable, "-m", "tlserve.cli", "serve"], capture_output=True, text=True,
                            env={"TLSERVE_MAX_BATCH_SIZE": "lots", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "TLSERVE_MAX_BATCH_SIZE" in result.stderr and "'lots'" in result.stderr


def test_train_reports_a_missing_file_without_traceback(tmp_path: object) -> None:
    result = subprocess.run([sys.executable, "-m", "tlserve.cli", "train", "--data", "/nonexistent.csv", "--vectors",
                             "/nonexistent-store", "--repository", "/tmp/x", "--model", "m"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "/nonexistent" in result.stderr
