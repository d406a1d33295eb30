"""The import contracts (pyproject.toml [tool.importlinter]) catch the imports they exist to forbid.

Each planted import below breaks one architectural rule; planted alone into a plain install of
the tree (as `scripts/test.sh` checks it), it must break the contract that states the rule.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# (file in the installed package, the import planted into it, the contract it must break)
PLANTS = [
    ("tlserve/server/frontends/grpc/native.py", "import tlserve.server.assembly",
     "server: commands > workers > assembly > front ends > serving core > settings"),
    ("tlserve/server/frontends/grpc/oip.py", "import tlserve.server.frontends.http.app",
     "front ends: the gRPC and HTTP front ends are independent, over what both share"),
    ("tlserve/server/core/batching.py", "import tlserve.server.core.dataplane",
     "serving core: the data plane over the lifecycle, observation, routing, batching and metrics"),
    ("tlserve/core/preprocessing.py", "import tlserve.core.features",
     "shared core: preprocessing below features below the bundle below the scorer"),
    ("tlserve/core/bundle.py", "import tlserve.core.scorer",
     "shared core: preprocessing below features below the bundle below the scorer"),
    ("tlserve/client/classifier.py", "import tlserve.core.process_memory",
     "client: the contract only (grpcio, protobuf; no shared core, no numpy)"),
]


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tlserve_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree installed as users get it (server/, trainer/, client/ inside tlserve/)."""
    tree = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-compile", "--target", str(tree), str(tlserve_wheel)], check=True, capture_output=True,
                   timeout=300)
    return tree


def test_the_tree_keeps_every_contract(installed: Path) -> None:
    result = _lint(installed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(("path", "planted", "contract"), PLANTS, ids=[plant[1].split()[1] for plant in PLANTS])
def test_a_planted_import_breaks_its_contract(installed: Path, path: str, planted: str, contract: str) -> None:
    target = installed / path
    original = target.read_text(encoding="utf-8")
    target.write_text(f"{original}\n{planted}  # planted\n", encoding="utf-8")
    try:
        result = _lint(installed)
    finally:
        target.write_text(original, encoding="utf-8")
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert f"{contract} BROKEN" in broken, result.stdout
    importer = path.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {planted.split()[1]}" in result.stdout, result.stdout


def test_a_new_module_must_take_a_place_in_its_layers(installed: Path) -> None:
    """The layers contracts are exhaustive: a module nobody placed is refused, not left unchecked."""
    stray = installed / "tlserve/server/frontends/http/extra_api.py"
    stray.write_text('"""A new HTTP module."""\n', encoding="utf-8")
    try:
        result = _lint(installed)
    finally:
        stray.unlink()
    assert result.returncode != 0, result.stdout
    assert "extra_api" in result.stdout + result.stderr
