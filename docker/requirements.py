"""Prints the requirements of the given extras of pyproject.toml, one per line.

Lets the Dockerfiles install the dependencies in a layer of their own, before the sources
are copied, so that a code change does not reinstall TensorFlow.

    python docker/requirements.py pyproject.toml server
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            nested = re.fullmatch(r"tlserve\[([\w,\s-]+)\]", requirement)
            if nested:
                pending.extend(name.strip() for name in nested.group(1).split(","))
            else:
                out.append(requirement)
    return sorted(set(out))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
