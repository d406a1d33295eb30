"""The limits of one request's texts, and reading them: how many, how long, and none at all.

A front end hands the core its protocol's sequence of texts (a protobuf repeated field, a
parsed JSON list); `read_texts` turns it into Python strings a slice per loop turn, so one
request of a thousand long texts never holds the event loop for milliseconds, then checks
each text's UTF-8 size. The count is checked before (`too_many_texts`), from the length alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from tlserve.server.core.errors import ErrorCode, ServingError

# Texts turned into Python strings per loop turn: a repeated field of 1,024 texts of 16 KB
# takes ~8 ms to read whole, during which a small call would wait.
READ_STEP = 64


@dataclass(frozen=True)
class RequestLimits:
    max_texts: int
    """max_texts_per_request."""
    max_text_bytes: int
    """max_text_bytes: UTF-8 bytes of one text."""


async def read_texts(texts: Sequence[str], limits: RequestLimits) -> list[str]:
    """The texts as a list of str; INVALID_ARGUMENT naming the text over `limits.max_text_bytes`, or for none."""
    if not texts:
        raise ServingError(ErrorCode.INVALID_ARGUMENT, "texts is empty: send at least one text")
    if isinstance(texts, list):
        read = texts
    elif len(texts) <= READ_STEP:
        read = list(texts)
    else:
        read = []
        for start in range(0, len(texts), READ_STEP):
            read.extend(texts[start : start + READ_STEP])
            await asyncio.sleep(0)
    byte_limit = limits.max_text_bytes
    for i, text in enumerate(read):
        # len(str) <= bytes <= 4 * len(str), and an ASCII text's bytes are its length
        # (isascii() reads a flag): encode only when neither settles it.
        size = len(text)
        if size > byte_limit or (size * 4 > byte_limit and not text.isascii()
                                 and len(text.encode("utf-8")) > byte_limit):
            raise ServingError(ErrorCode.INVALID_ARGUMENT, f"texts[{i}] has {len(text.encode('utf-8'))} UTF-8 bytes; "
                                                           f"the limit is max_text_bytes={byte_limit}")
    return read
