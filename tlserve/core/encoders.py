"""Which encoder turns a text's tokens into model inputs: the compiled one where it was built, else Python.

The compiled encoder (`tlserve.core._encoder`, built from Cython at install where a C compiler
exists) computes the same numbers as the Python encoder in `tlserve.core.features`, bit for bit,
at a fraction of the cost per text; the Python encoder is the reference and the fallback.
``TLSERVE_ENCODER`` chooses: ``auto`` (the default: compiled if installed), ``python``, or
``native`` (the compiled one, or an error naming why it is missing).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Literal

EncoderName = Literal["native", "python"]
ENCODER_VARIABLE = "TLSERVE_ENCODER"

_compiled: ModuleType | None
_missing = ""
try:
    _compiled = importlib.import_module("tlserve.core._encoder")
except ImportError as exc:  # a pure-Python install
    _compiled, _missing = None, str(exc)


def compiled_available() -> bool:
    """Whether this install has the compiled encoder."""
    return _compiled is not None


def chosen_encoder() -> EncoderName:
    """The encoder ``TLSERVE_ENCODER`` asks for, as this install can give it."""
    wanted = os.environ.get(ENCODER_VARIABLE, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "native", "python"):
        raise ValueError(f"{ENCODER_VARIABLE}={wanted!r}: expected auto, native or python")
    if wanted == "native" and _compiled is None:
        raise ValueError(f"{ENCODER_VARIABLE}=native, but this install has no compiled encoder ({_missing}); "
                         "reinstall tlserve where a C compiler exists")
    if wanted == "python" or _compiled is None:
        return "python"
    return "native"


def native_encoder(**arrays: Any) -> Any:
    """A compiled encoder over one model's arrays (see `tlserve.core._encoder.NativeEncoder`)."""
    assert _compiled is not None
    return _compiled.NativeEncoder(**arrays)
