"""The table of served versions: which scorer and batcher answer a model name and version."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tlserve.core.bundle import check_model_name
from tlserve.core.scorer import Scorer
from tlserve.server.core.batching import DynamicBatcher
from tlserve.server.core.errors import ErrorCode, ServingError


def parse_version(text: str, where: str) -> int:
    """A version number written as text (empty: 0, the newest); INVALID_ARGUMENT naming `where` otherwise."""
    if not text:
        return 0
    # isdecimal() alone takes any script's digits ('١', and isdigit() '¹'), which int() may refuse.
    if not (text.isascii() and text.isdecimal()) or int(text) <= 0:
        raise ServingError(ErrorCode.INVALID_ARGUMENT,
                           f"{where} {text!r} is not a version number (1, 2, ...; empty: the newest)")
    return int(text)


class LabelSet:
    """A served version's labels, in the order of its probability columns: one object per version, so
    front ends can cache what they build from it (a response encoder) by identity."""

    __slots__ = ("__weakref__", "names")

    def __init__(self, names: list[str]) -> None:
        self.names = names


@dataclass
class ServedVersion:
    """One model version taking traffic."""

    scorer: Scorer
    batcher: DynamicBatcher
    held: str | None = None
    """Why the version is NOT_SERVING while loaded (its store's files in the repository changed), or None."""
    labels: LabelSet = field(init=False)
    # Fields, not properties: the serving core reads them on every call.
    name: str = field(init=False)
    version: int = field(init=False)

    def __post_init__(self) -> None:
        self.labels = LabelSet(list(self.scorer.labels))
        self.name = self.scorer.name
        self.version = self.scorer.version


class RoutingTable:
    """Served versions by model name and version number; the newest answers version 0."""

    def __init__(self) -> None:
        self.models: dict[str, dict[int, ServedVersion]] = {}

    def add(self, served: ServedVersion) -> None:
        self.models.setdefault(served.name, {})[served.version] = served

    def remove(self, name: str, version: int) -> ServedVersion | None:
        versions = self.models.get(name, {})
        served = versions.pop(version, None)
        if not versions:
            self.models.pop(name, None)
        return served

    def get(self, name: str, version: int | str = 0, where: str = "version") -> ServedVersion:
        """The served `name` at `version` (0 or "": the newest; a string is parsed as a protocol writes a version,
        `where` naming it in the error); NOT_FOUND says what is served instead."""
        if isinstance(version, str):
            version = parse_version(version, where)
        versions = self.models.get(name)
        if not versions:
            try:
                check_model_name(name)
            except ValueError as exc:
                raise ServingError(ErrorCode.NOT_FOUND, str(exc)) from None
            raise ServingError(ErrorCode.NOT_FOUND,
                               f"model {name!r} is not served; served: {sorted(self.models) or 'none'}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ServingError(ErrorCode.NOT_FOUND,
                               f"model {name!r} has no version {version}; served versions: {sorted(versions)}")
        return versions[version]

    def serving(self, name: str) -> bool:
        """Whether `name`'s newest version takes calls (is loaded and not held)."""
        versions = self.models.get(name)
        return versions is not None and versions[max(versions)].held is None

    def versions(self, name: str) -> list[int]:
        """Served versions of `name`, newest first."""
        return sorted(self.models.get(name, {}), reverse=True)

    def all_versions(self) -> Iterator[ServedVersion]:
        for name in sorted(self.models):
            for version in sorted(self.models[name]):
                yield self.models[name][version]

    def __iter__(self) -> Iterator[ServedVersion]:
        """The newest version of each model, by name."""
        for name in sorted(self.models):
            yield self.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.models
