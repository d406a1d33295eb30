"""Training end to end on real vectors and a real WordNet sample: bundles, parity, reports, features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tlserve.core.bundle import Bundle, check_model_name, versions_of
from tlserve.core.errors import BundleError
from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.core.scorer import Scorer

from conftest import WORDNET_SAMPLE, Trained, mixed_texts


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_server_features_are_bit_identical_to_the_trainers(trained: Trained, mode: str) -> None:
    result = trained.frozen if mode == "frozen" else trained.finetune
    runtime = Scorer.open(result.path)
    served = runtime.featurizer.encode(mixed_texts(1000))
    with np.load(result.trainer_features) as recorded:
        trainer_inputs = {name: recorded[name] for name in recorded.files if name != "token_counts"}
        trainer_token_counts = recorded["token_counts"]
    assert served.inputs.keys() == trainer_inputs.keys()
    semantic = {"features"} if mode == "frozen" else {"token_ids", "base_sum", "features"}
    assert runtime.bundle.features.lexical  # the mix kept the lexical channel on this sample
    assert set(served.inputs) == set(runtime.bundle.features.input_names)
    assert semantic | {"lexicon_ids", "lexicon_weights"} <= set(served.inputs)
    for name, array in served.inputs.items():
        assert array.dtype == trainer_inputs[name].dtype
        assert np.array_equal(array, trainer_inputs[name])
        assert np.isfinite(array).all()
    assert np.array_equal(served.token_counts, trainer_token_counts)
    assert served.token_counts[0] == 0 and served.token_counts[2] == 0  # empty, emoji only


def test_bundle_layout_manifest_and_parity(trained: Trained) -> None:
    for result, mode in ((trained.frozen, "frozen"), (trained.finetune, "finetune")):
        bundle = Bundle.open(result.path)
        manifest = bundle.manifest
        assert manifest.mode == mode and manifest.version == 1 and result.path.name == "1"
        assert manifest.parity.ok and manifest.parity.max_abs_diff <= 1e-5
        assert manifest.parity.argmax_agreement == 1.0
        assert manifest.parity.examples == manifest.training_data.examples["test"] == 240
        assert {"model.onnx", "labels.json", "preprocessing.json", "report.json", "report.md", "confusion.png",
                "training_curves.png"} <= set(manifest.files)
        assert manifest.onnx.opset == 17 and manifest.onnx.output == "probabilities"
        assert len(manifest.training_data.fingerprint) == 64
        assert "tensorflow-cpu" in manifest.library_versions or "tensorflow" in manifest.library_versions
        assert 0.3 < manifest.metrics["test_accuracy"] <= 1.0
        report = json.loads((result.path / "report.json").read_text())
        assert len(report["test"]["confusion"]["matrix"]) == 10
        assert any("coverage" in note or "mismatch" in note for note in report["findings"])
        assert "reliability.png" in manifest.files
        calibration = report["calibration"]
        assert calibration["temperature"] == manifest.hyperparameters["temperature"]
        assert 0.0 <= calibration["ece_after"] <= 1.0 and sum(b["count"] for b in calibration["bins"]) == 240
        transfer = report["transfer_check"]  # GloVe on WordNet glosses: the vectors carry the task
        assert transfer["pretrained"] > transfer["random"] + 0.2
        assert any(note.startswith("Transfer helps") for note in report["findings"])
        assert not any("mismatch" in note.lower() for note in report["findings"])
    assert "sif_weights.npy" in Bundle.open(trained.frozen.path).manifest.files
    finetune = Bundle.open(trained.finetune.path).manifest
    assert {"trained_rows.npy", "trained_buckets.npy"} <= set(finetune.files)
    assert not any(name.startswith("store/") for name in finetune.files)
    assert finetune.vector_store.shared and finetune.format == 2


def test_onnx_graph_has_named_inputs_and_dynamic_batch(trained: Trained) -> None:
    import onnxruntime as ort

    lexical = ["lexicon_ids", "lexicon_weights"]
    for result, names in ((trained.frozen, sorted(["features", *lexical])),
                          (trained.finetune, sorted(Bundle.open(trained.finetune.path).features.input_names))):
        assert {"lexicon_ids", "lexicon_weights"} <= set(names)
        session = ort.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
        inputs = {graph_input.name: graph_input for graph_input in session.get_inputs()}
        (out,) = session.get_outputs()
        assert sorted(inputs) == names and out.name == "probabilities"
        assert all(not isinstance(graph_input.shape[0], int) for graph_input in inputs.values())  # dynamic batch
        for name in ("token_ids", *lexical):
            if name in inputs:
                assert not isinstance(inputs[name].shape[1], int)  # any number of tokens or n-grams


def test_tampered_bundle_is_refused(trained: Trained, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "wn-frozen" / "1"
    shutil.copytree(trained.frozen.path, copy)
    with open(copy / "labels.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match=r"labels\.json: sha256"):
        Bundle.open(copy)
    (copy / "labels.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.open(copy)


def test_model_names_cannot_escape_the_repository() -> None:
    for bad in ("../x", "a/b", ".hidden", "_stores", "", "a..b", "x" * 200):
        with pytest.raises(ValueError):
            check_model_name(bad)
    assert check_model_name("tickets-v2.en_US") == "tickets-v2.en_US"


def test_versions_increase_and_ignore_staging(trained: Trained, glove_store: Path, tmp_path: Path) -> None:
    from conftest import _train

    model_dir = trained.repository / "wn-frozen"
    (model_dir / ".staging-leftover").mkdir(exist_ok=True)
    assert versions_of(model_dir) == [1]
    small = {"pooling": "mean", "train_fraction": 0.3, "calibration_folds": 1}
    second = _train(glove_store, tmp_path, "wn-frozen-v", "frozen", **small)
    third = _train(glove_store, tmp_path, "wn-frozen-v", "frozen", **small)
    assert (second.path.name, third.path.name) == ("1", "2")  # type: ignore[attr-defined]
    # Same seed, same data: the same weights (reproducible on CPU); only graph names differ.
    import onnx
    from onnx import numpy_helper

    def weights(path: Path) -> list[np.ndarray]:
        graph = onnx.load(str(path / "model.onnx")).graph
        return [numpy_helper.to_array(t) for t in sorted(graph.initializer, key=lambda t: (list(t.dims), t.raw_data))]

    a, b = weights(second.path), weights(third.path)  # type: ignore[attr-defined]
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_random_vectors_model_is_served_with_the_vectors_it_trained_on(glove_store: Path, tmp_path: Path) -> None:
    """The no-transfer ablation's bundle reads its own random table, never the pretrained one."""
    from tlserve.core.vector_store import VectorStore
    from tlserve.trainer.fitting import predict

    from conftest import _train

    result = _train(glove_store, tmp_path, "wn-random", "frozen", random_vectors=True, lexical=False, pooling="mean")
    scorer = Scorer.open(result.path)  # type: ignore[attr-defined]
    pretrained = VectorStore(glove_store)
    assert scorer.bundle.store_fingerprint != pretrained.fingerprint
    assert scorer.store.vocabulary == pretrained.vocabulary
    assert "random vectors" in scorer.store.manifest.source_name
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][:300]
    served = scorer.predict(texts).probabilities
    trained_answers = predict(result.fitted, texts)[0]  # type: ignore[attr-defined]
    assert np.abs(served - trained_answers).max() < 1e-5


def test_preprocessing_tokenises_latin_and_chinese() -> None:
    latin = Preprocessor(PreprocessingConfig(case="lower", max_tokens=5))
    assert latin.tokens("Ｆｕｌｌｗｉｄｔｈ CAFÉ, naïve!") == ["fullwidth", "café", "naïve"]
    assert latin.tokens("猫是动物") == ["猫", "是", "动", "物"]
    assert latin.tokens("one two three four five six") == ["one", "two", "three", "four", "five"]
    assert latin.tokens("🐱 \x00 —") == []
    words = Preprocessor(PreprocessingConfig(case="keep", tokenizer="jieba"))
    tokens = words.tokens("我喜欢小猫 and Dogs")
    assert "喜欢" in tokens and "Dogs" in tokens and "我喜欢小猫" not in tokens


def test_the_fasttext_peer_trains_at_every_seed(tmp_path: Path) -> None:
    """fastText 0.9.3 leaves blocks of its input matrix uninitialised below ten threads."""
    pytest.importorskip("fasttext")
    from tlserve.trainer.peers import train_fasttext, write_fasttext_file

    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as handle:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(handle)]
    train_file = tmp_path / "train.txt"
    write_fasttext_file(train_file, [text.lower() for text, _ in rows], [label for _, label in rows], seed=0)
    for seed in range(6):
        model, rate = train_fasttext(train_file, epoch=5, lr=0.1, seed=seed, options={"wordNgrams": 1, "dim": 100})
        assert model is not None and rate == 0.1, f"seed {seed}"
        assert np.isfinite(model.get_input_matrix()).all()


def test_compare_runs_peers_and_ablations_on_the_same_split(glove_store: Path, tmp_path: Path) -> None:
    from tlserve.trainer.config import HeadConfig

    from conftest import _train

    # A tenth of the training labels: every system on the same (smaller) split, in a fraction of the time;
    # calibration on the validation split only (out-of-fold answers are the subject of test_calibration).
    result = _train(glove_store, tmp_path, "wn-compare", "frozen", compare=True, learning_curve=False,
                    train_fraction=0.1, calibration_folds=1,
                    head=HeadConfig(hidden=32, epochs=2, batch_size=64, patience=2))
    path = result.path  # type: ignore[attr-defined]
    report = json.loads((path / "report.json").read_text())
    systems = report["comparison"]["systems"]
    assert {"tlserve_frozen", "tlserve_finetune", "random_vectors_frozen", "random_vectors_finetune",
            "tfidf_logreg", "fasttext", "fasttext_vectors"} <= set(systems)
    assert all(0.0 <= scores["accuracy"] <= 1.0 for scores in systems.values())
    assert "learning_curve" not in report["comparison"]
    assert any(note.startswith(("Transfer helped", "Negative transfer")) for note in report["findings"])
    markdown = (path / "report.md").read_text()
    assert "## Comparison" in markdown and "fasttext_vectors" in markdown and "## Learning curve" not in markdown


@pytest.mark.slow
def test_compare_draws_the_learning_curve(glove_store: Path, tmp_path: Path) -> None:
    """Twelve more trainings (six fractions, pretrained and random vectors): in the slow suite."""
    from conftest import _train

    result = _train(glove_store, tmp_path, "wn-curve", "frozen", compare=True, learning_curve=True)
    path = result.path  # type: ignore[attr-defined]
    curve = json.loads((path / "report.json").read_text())["comparison"]["learning_curve"]
    assert [point["fraction"] for point in curve] == [0.01, 0.05, 0.10, 0.25, 0.50, 1.0]
    assert curve[-1]["examples"] > curve[0]["examples"]
    assert all(0.0 <= point[key] <= 1.0 for point in curve for key in ("pretrained", "random"))
    assert "learning_curve.png" in Bundle.open(path).manifest.files
    assert "## Learning curve" in (path / "report.md").read_text()


def test_scorers_opened_with_one_cache_share_one_store(trained: Trained) -> None:
    from tlserve.core.scorer import StoreCache

    cache = StoreCache()
    frozen = Scorer.open(trained.frozen.path, stores=cache)
    finetune = Scorer.open(trained.finetune.path, stores=cache)
    assert len(cache) == 1  # the shared store once: a finetune model reads it too
    assert frozen.featurizer.matrix is finetune.featurizer.matrix  # one memory map for both


def test_the_transfer_finding_fires_when_the_vectors_buy_nothing() -> None:
    from tlserve.trainer.report import transfer_finding

    helps = {"validation_examples": 500, "pretrained": 0.80, "random": 0.55, "lexical_log_loss": 0.70,
             "mixed_log_loss": 0.55}
    assert transfer_finding(helps).startswith("Transfer helps")
    no_better_than_random = transfer_finding({**helps, "pretrained": 0.71, "random": 0.70})
    assert no_better_than_random.startswith("Data mismatch (negative transfer)")
    assert "tlserve vectors adapt" in no_better_than_random
    adds_nothing_to_the_words = transfer_finding({**helps, "mixed_log_loss": 0.698})
    assert adds_nothing_to_the_words.startswith("Data mismatch: the vectors help over random ones but add nothing")
    # A gap within one standard error on 100 texts is noise.
    assert transfer_finding({**helps, "validation_examples": 100, "pretrained": 0.60,
                             "random": 0.55}).startswith("Data mismatch (negative transfer)")
    assert transfer_finding({**helps, "validation_examples": 100, "pretrained": 0.70,
                             "random": 0.55}).startswith("Transfer helps")
