"""Text preprocessing shared by the trainer and the server: one implementation, one config.

The configuration is written into every model bundle, and the server rebuilds the exact
same `Preprocessor` from it, so the features a model sees in serving are bit-identical to
the ones it was trained on (a test checks this on 1,000 texts).

Steps: Unicode NFKC normalisation, the case policy of the vector store, tokenisation,
then truncation to `max_tokens`.

Tokenisers:
- ``latin``: runs of letters/digits (``\\w``) outside CJK; CJK characters become one
  token each, so a Chinese sentence is never a single token.
- ``jieba``: as ``latin``, but each run of Chinese characters is segmented into words
  with jieba; for stores whose vocabulary holds word-level Chinese.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

CasePolicy = Literal["lower", "keep"]
TokenizerName = Literal["latin", "jieba"]
Units = Literal["words", "chars", "words+chars"]
"""The units of a lexical channel: the tokens, the characters of the normalised text, or the tokens read both
as words and as character n-grams within each word (`tlserve.core.lexicon`)."""
_WHITESPACE = re.compile(r"\s+")

# Han characters (CJK extension A, unified and compatibility ideographs), and the Japanese kana: the
# characters the latin tokeniser keeps one per token, since the scripts put no spaces between words.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = "\u3040-\u30ff" + HAN
_LATIN_OR_CJK_CHAR = re.compile(rf"[^\W{_CJK}]+|[{_CJK}]")
_LATIN_OR_CJK_RUN = re.compile(rf"[^\W{_CJK}]+|[{_CJK}]+")
_CJK_RUN = re.compile(rf"[{_CJK}]+")


@dataclass(frozen=True)
class PreprocessingConfig:
    """How raw text becomes tokens; stored in the bundle as ``preprocessing.json``."""

    case: CasePolicy = "lower"
    """Lower-case after normalisation ("lower") or keep case ("keep"); matches the vector store."""
    tokenizer: TokenizerName = "latin"
    """Tokeniser name: "latin" (CJK as single characters) or "jieba" (CJK word segmentation)."""
    max_tokens: int = 256
    """Tokens beyond this count are dropped, bounding the cost of one text."""
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFKC"
    """Unicode normalisation form applied first."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingConfig:
        known = {k: data[k] for k in ("case", "tokenizer", "max_tokens", "normalization") if k in data}
        config = cls(**known)
        config.validate()
        return config

    def validate(self) -> None:
        if self.case not in ("lower", "keep"):
            raise ValueError(f"preprocessing.case must be 'lower' or 'keep', not {self.case!r}")
        if self.tokenizer not in ("latin", "jieba"):
            raise ValueError(f"preprocessing.tokenizer must be 'latin' or 'jieba', not {self.tokenizer!r}")
        if not 1 <= self.max_tokens <= 100_000:
            raise ValueError(f"preprocessing.max_tokens must be in 1..100000, not {self.max_tokens}")
        if self.normalization not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"preprocessing.normalization must be a Unicode form, not {self.normalization!r}")


class Preprocessor:
    """Turns texts into token lists according to a `PreprocessingConfig`."""

    def __init__(self, config: PreprocessingConfig) -> None:
        config.validate()
        self.config = config
        self._tokenize: Callable[[str], list[str]]
        if config.tokenizer == "jieba":
            self._tokenize = _jieba_tokenizer()
        else:
            self._tokenize = _LATIN_OR_CJK_CHAR.findall
        # Texts longer than this are read from their start, a window at a time (see `tokens`).
        self._window = 16 * config.max_tokens

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize(self.config.normalization, text)
        return text.lower() if self.config.case == "lower" else text

    def tokens(self, text: str) -> list[str]:
        """The tokens of one text, at most `max_tokens` of them.

        A long document is normalised and tokenised from its start, a growing window at a time,
        until the cap is reached, instead of whole to keep its first tokens. Each window ends
        just after an ASCII space: no normalisation form composes a space with what is around
        it, lower-casing decides a final sigma by the next character (the space), and no token
        spans a space, so the tokens are those of the whole text (a test checks this)."""
        cap = self.config.max_tokens
        size = self._window
        while len(text) > size:
            cut = text.find(" ", size)
            if cut < 0:
                break
            found = self._tokenize(self.normalize(text[: cut + 1]))
            if len(found) >= cap:
                return found[:cap]
            size *= 4
        return self._tokenize(self.normalize(text))[:cap]

    def is_truncated(self, text: str) -> bool:
        """Whether `text` has more than `max_tokens` tokens (and so loses the rest)."""
        return len(self._tokenize(self.normalize(text))) > self.config.max_tokens

    def chars(self, text: str) -> list[str]:
        """The characters of the normalised text, whitespace runs as one space, at most 4 x max_tokens of them."""
        window = text[: 4 * self.config.max_tokens]
        return list(_WHITESPACE.sub(" ", self.normalize(window)).strip())

    def batch_tokens(self, texts: Sequence[str]) -> list[list[str]]:
        return [self.tokens(text) for text in texts]

    def batch_units(self, texts: Sequence[str], units: Units) -> list[list[str]]:
        """Each text's characters (`units` "chars"), else its tokens."""
        return [self.chars(text) for text in texts] if units == "chars" else self.batch_tokens(texts)

    def batch_tokens_and_chars(self, texts: Sequence[str], chars: bool
                               ) -> tuple[list[list[str]], list[list[str]] | None]:
        """Each text's tokens, and (when `chars`) its characters: what a model with a character channel reads."""
        return self.batch_tokens(texts), [self.chars(text) for text in texts] if chars else None


def _jieba_tokenizer() -> Callable[[str], list[str]]:
    # Imported here: only Chinese word-level models pay jieba's dictionary load.
    import jieba

    jieba.setLogLevel(60)

    def tokenize(text: str) -> list[str]:
        out: list[str] = []
        for run in _LATIN_OR_CJK_RUN.findall(text):
            if _CJK_RUN.fullmatch(run):
                out.extend(word for word in jieba.lcut(run, HMM=False) if word.strip())
            else:
                out.append(run)
        return out

    return tokenize
