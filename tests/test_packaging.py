"""The project as users install it: stubs up to date, importable under protobuf 5/6/7, a light client."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = {"v1": ROOT / "tlserve" / "contract" / "v1", "oip": ROOT / "tlserve" / "contract" / "oip"}


def generate(out: Path, protos: Path = ROOT / "protos") -> None:
    """Writes out/v1 and out/oip."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out), "--protos",
                    str(protos)], check=True, capture_output=True)


def differences(a: Path, b: Path) -> list[str]:
    names = sorted({p.name for p in a.iterdir() if p.is_file()} | {p.name for p in b.iterdir() if p.is_file()})
    return [n for n in names if not ((a / n).exists() and (b / n).exists() and filecmp.cmp(a / n, b / n, False))]


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generate(tmp_path)
    for key, committed in STUBS.items():
        assert differences(committed, tmp_path / key) == [], f"{committed} is stale: run `python scripts/gen_protos.py`"


def test_stale_stub_check_fails_when_the_proto_changes(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    proto = protos / "tlserve" / "v1" / "classifier.proto"
    text = proto.read_text()
    field = "  string request_id = 5;\n"
    proto.write_text(text.replace(field, field + "  bool new_field = 99;\n", 1))
    generate(tmp_path / "out", protos)
    assert "classifier_pb2.py" in differences(STUBS["v1"], tmp_path / "out" / "v1")


@pytest.mark.parametrize("protobuf", ["5.29.6", "6.33.5", "7.36.2"])
def test_stubs_import_under_protobuf_runtimes(protobuf: str, tmp_path: Path) -> None:
    """The generated modules import and round-trip a message under each protobuf major."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(target), f"protobuf=={protobuf}"], check=True, capture_output=True)
    code = (
        "import google.protobuf as p; from tlserve.contract.v1 import classifier_pb2 as pb, classifier_pb2_grpc; "
        "m = pb.ClassifyRequest(model='m', texts=['a', 'b'], top_k=2); "
        "assert pb.ClassifyRequest.FromString(m.SerializeToString()) == m; print(p.__version__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == protobuf


def _readme_client_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.index("From Python, with only `tlserve[client]` installed:")
    start = readme.index("```python\n", after) + len("```python\n")
    return readme[start:readme.index("```", start)]


@pytest.mark.parametrize("source", ["wheel", "git"])
def test_the_client_installs_as_the_readme_says_and_runs_its_snippet(source: str, tiny_store: Path, tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    """A wheel built here (or the repository as a git URL), installed with only the client extra into a fresh
    venv: no heavy package, the README's client snippet answers from a served model, and the server-side
    verbs say in one line which extra they need."""
    from tlserve.server.in_thread import running

    from conftest import tiny_repository

    if source == "wheel":
        requirement = f"tlserve[client] @ {request.getfixturevalue('tlserve_wheel').as_uri()}"
    else:
        requirement = f"tlserve[client] @ git+{ROOT.as_uri()}"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # As the README says: a current pip first (Python 3.11's own pip 23.2 misreads a git+file URL).
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-U", "pip"],
                   check=True, capture_output=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-c", str(ROOT / "constraints.txt"), requirement], check=True, capture_output=True)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert {"grpcio", "protobuf", "tlserve"} <= installed
    assert not installed & {"tensorflow", "tensorflow-cpu", "onnxruntime", "gensim", "numpy", "keras"}, installed
    with running(tiny_repository(tmp_path / "repo", tiny_store, "tickets"), tmp_path) as server:
        snippet = _readme_client_snippet().replace('"localhost:50051"', f'"{server.target}"')
        result = subprocess.run([str(python), "-c", snippet], capture_output=True, text=True, cwd=tmp_path,
                                timeout=120)
    assert result.returncode == 0, result.stderr
    answers = [line.split() for line in result.stdout.splitlines()]
    assert len(answers) == 2 and all(line[0].startswith("noun.") for line in answers), result.stdout
    tlserve = str(env_dir / "bin" / "tlserve")
    for verb, extra in (["serve", "--repository", "models"], "server"), (["train", "--data", "x.csv", "--vectors",
                        "s", "--repository", "r", "--model", "m"], "trainer"), (["score", "--model", "r/m",
                        "--input", "x.csv", "--output", "y.parquet"], "scoring"), (["test", "--model", "r/m",
                        "--data", "x.csv"], "server"):
        refused = subprocess.run([tlserve, *verb], capture_output=True, text=True, cwd=tmp_path)
        assert refused.returncode == 2, (verb, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'tlserve[{extra}]'" in lines[0], (verb, refused.stderr)
    code = ("from tlserve.client import Classifier, AsyncClassifier; "
            "from tlserve.contract.v1 import classifier_pb2, classifier_pb2_grpc; import tlserve.cli; "
            # The documented name of the stubs is the same module objects.
            "from tlserve.client.v1 import classifier_pb2 as old; from tlserve.client.v1.classifier_pb2_grpc import "
            "ClassifierStub; assert old is classifier_pb2 and ClassifierStub is classifier_pb2_grpc.ClassifierStub; "
            "import importlib.util as u; assert u.find_spec('server') is None and u.find_spec('trainer') is None; "
            "assert u.find_spec('client') is None; print('ok')")
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr
    # The console script is there and its client verbs work without the server extra.
    helped = subprocess.run([tlserve, "classify", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--model" in helped.stdout, helped.stderr


@pytest.mark.parametrize("how", ["no compiler", "TLSERVE_PURE_PYTHON=1"])
def test_without_a_compiler_tlserve_installs_as_pure_python_and_encodes(how: str, tmp_path: Path) -> None:
    """Where the compiled encoder cannot be built (no C compiler) or is not wanted, the install still succeeds
    and features come from the Python encoder."""
    # A copy of the tracked files: a build writes into its source tree, which other tests build from.
    source = tmp_path / "source"
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    env = dict(os.environ)
    if how == "no compiler":
        env["CC"] = "false"  # every compile fails, as on a machine without one
    else:
        env["TLSERVE_PURE_PYTHON"] = "1"
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                "--no-deps", "--no-compile", "--target", str(target), str(source)],
                               capture_output=True, text=True, timeout=600, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert not list(target.rglob("_encoder*.so")), "a compiled encoder was installed"
    snippet = ("from tlserve.core.features import FeatureConfig, Featurizer\n"
               "from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor\n"
               "from tlserve.core.vector_store import VocabularyIndex\n"
               "import numpy as np\n"
               "f = Featurizer(FeatureConfig(), Preprocessor(PreprocessingConfig()), VocabularyIndex.build(['cat']),"
               " np.ones((1, 2), np.float32))\n"
               "print(f.encoder, f.encode(['a cat']).inputs['features'].tolist())\n")
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split(maxsplit=1) == ["python", "[[1.0, 1.0]]\n"]
    version = subprocess.run([sys.executable, "-m", "tlserve.cli", "--version"], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert "encoder: python (no compiled encoder (pure-Python install))" in version.stdout
