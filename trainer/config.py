"""Settings of the trainer as typed objects, one docstring per field.

Imported by `tlserve train`'s argument parser for its defaults, so this module imports
nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PEERS = ("tfidf_logreg", "tfidf_word_char", "fasttext", "fasttext_vectors")
"""The peers `tlserve evaluate` can run (`tlserve.trainer.peers`)."""


@dataclass
class HeadConfig:
    """Hyper-parameters of the MLP head and its training."""

    hidden: int = 256
    """Units of the hidden layer; 0 makes the head linear (softmax regression)."""
    dropout: float = 0.3
    """Dropout rate after the hidden layer."""
    l2: float = 1e-5
    """L2 penalty on the dense kernels."""
    learning_rate: float = 2e-3
    """Adam learning rate."""
    epochs: int = 40
    """Most epochs; early stopping on validation loss usually ends sooner."""
    batch_size: int = 0
    """Examples per gradient step; 0 picks one from the data: about 100 steps per epoch, between 16 and
    256, so a few hundred labels still get enough updates before early stopping looks."""
    patience: int = 4
    """Epochs without a better validation score before stopping (the best weights are restored)."""
    monitor: str = "auto"
    """What early stopping watches: "val_loss", "val_accuracy", or "auto": validation loss for the frozen head,
    validation accuracy for finetune, whose adapted embeddings grow over-confident (validation loss rises while
    accuracy still climbs); 4-fold CV on the 10 % WordNet budget: 0.803 vs 0.798."""
    class_weights: bool = False
    """Weight classes inversely to their frequency, for imbalanced data."""
    word_dropout: float = 0.1
    """finetune only: probability of dropping each token id during training."""


@dataclass
class TrainConfig:
    """Everything `tlserve train` needs; every field has a flag."""

    data: Path
    """Labelled file: .csv, .tsv, .jsonl or fastText .txt."""
    vectors: Path
    """Vector store folder (from `tlserve vectors import`)."""
    repository: Path
    """Model repository to publish into."""
    model: str
    """Model name (letters, digits, '_', '-', '.')."""
    mode: str = "finetune"
    """"finetune" (adapted embeddings + frozen channel) or "frozen" (pooled shared vectors + MLP head)."""
    data_format: str | None = None
    """csv, tsv, jsonl or fasttext; None: from the file suffix."""
    text_column: str = "text"
    """Column (CSV/TSV) or field (JSONL) of the text."""
    label_column: str = "label"
    """Column or field of the label."""
    empty: str = "skip"
    """Empty texts: "skip" (and count) or "error"."""
    unlabelled: str = "error"
    """Rows without a label (JSON null, empty cell): "error" or "skip" (a payload log's unlabelled lines)."""
    validation_data: Path | None = None
    """Own validation file instead of a split."""
    test_data: Path | None = None
    """Own test file instead of a split."""
    test_fraction: float = 0.2
    """Share of each class held out for the test split."""
    validation_fraction: float = 0.1
    """Share of the rest held out for validation (model selection, early stopping)."""
    train_fraction: float = 1.0
    """Stratified share of the training labels to use (learning-curve studies)."""
    seed: int = 0
    """Seed of the splits, the subsampling and the training."""
    tokenizer: str = "latin"
    """"latin" (CJK as characters) or "jieba" (Chinese words)."""
    max_tokens: int = 4096
    """Tokens kept per text (from its start). 4,096 keeps 99.6 % of the SpamAssassin e-mails whole (256 cut a
    quarter of them); the cost per text grows with its tokens, so a server's answer time stays bounded."""
    pooling: str = "auto"
    """"mean", "mean_max" (mean and element-wise max, concatenated) or "auto": mean_max for frozen; for finetune,
    one model of each is trained and the exported graph mixes their probabilities with the weights that minimise
    the validation log-loss (a member weighted 0 is left out). Choosing one pooling on validation accuracy was
    noisy (mean won 4-fold CV on WordNet's short glosses, 0.798 vs 0.784, long e-mails keep more with the max, and
    a few hundred validation texts picked the worse one on SpamAssassin); an even average let the weaker member
    pull WordNet down."""

    @property
    def resolved_pooling(self) -> str:
        if self.pooling != "auto":
            return self.pooling
        return "mean_max" if self.mode == "frozen" else "mean"

    def __post_init__(self) -> None:
        # Paths may be given as strings (from Python); the trainer works with Path objects.
        for name in ("data", "vectors", "repository", "validation_data", "test_data"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, Path(value))

    def pooling_candidates(self) -> list[str]:
        if self.pooling == "auto" and self.mode == "finetune":
            return ["mean", "mean_max"]
        return [self.resolved_pooling]
    sif: bool = False
    """frozen: SIF-weighted mean, a/(a+p(w)) with p(w) from the training texts."""
    buckets: int = 100_000
    """finetune: hashed rows for unknown words and bigrams (0 = none)."""
    bigrams: bool = True
    """finetune: hashed word bigrams as extra tokens."""
    static: bool = True
    """finetune: a frozen channel of pooled shared-store vectors beside the trained rows."""
    random_vectors: bool = False
    """Replace the vectors by random ones of the same shape (the no-transfer ablation)."""
    lexical: bool = True
    """A lexical channel beside the vectors: logistic regression on TF-IDF word uni- and bigrams of the same
    tokens, mixed in with the weight that minimises the validation log-loss (0 leaves it out). Few labels
    teach little to a network, but a linear model learns the words and phrases they carry."""
    lexicon_chars: bool = True
    """Character n-grams within words in the lexical channel (latin tokenizer): the 2- to 5-grams of each token,
    weighted as a block of their own, after the word n-grams within `lexicon_size`. They let a few labels
    generalise across a word's forms and the parts of names (reviews at 10 % of the labels: +0.9 and +2.0 points
    on two seeded splits the accuracy table does not use; capped at half the word n-grams: -1.8 and +1.6)."""
    lexicon_size: int = 200_000
    """Most n-grams in the lexical channel (fewer for many labels: n-grams x labels stays under 5 M weights)."""
    calibrate: bool = True
    """Temperature scaling of the probabilities, fitted on the validation split (accuracy unchanged)."""
    calibration_method: str = "adaptive"
    """"adaptive": a temperature that depends on the text's confidence, t = T * (max p)^b, kept only when it
    predicts held-out calibration texts better than one temperature in cross-validation (else b = 0);
    "temperature": one temperature (`tlserve.trainer.calibration`)."""
    calibration_folds: int = 4
    """With a validation split smaller than `calibration_min_examples`: the mixture weights and the temperature
    are fitted on it together with out-of-fold answers for every training text (each member retrained at its
    chosen epoch count on the other folds). A temperature fitted on 50 texts was as likely to hurt as to help."""
    calibration_min_examples: int = 250
    """Validation texts from which the validation split alone fits the mixture and the temperature."""
    transfer_check: bool = True
    """Also fit a linear probe on texts pooled from the pretrained vectors and from random vectors of the store's
    shape, to report on validation what the source knowledge buys on this task: data mismatch and negative
    transfer."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """Hyper-parameters of the head and of training."""
    compare: bool = False
    """Also run the peers and ablations on the same split and report them."""
    learning_curve: bool = True
    """With compare: also the learning curve (the slowest part)."""
    progress: bool = True
    """Per-epoch progress output."""
