"""Reading a folder's manifest.json, for model versions and vector stores alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlserve.core.errors import BundleError

MANIFEST = "manifest.json"


def read_manifest(folder: Path, what: str) -> dict[str, Any]:
    """The JSON object in `folder`/manifest.json; BundleError says the folder is not `what` when there is none,
    and names the file when it cannot be read."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{folder}: not {what} (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: unreadable manifest: not a JSON object")
    return data
