"""The model registry: immutable, numbered versions under ``$TUNESMITH_HOME/registry/NAME/VERSION``.

A version is assembled in a hidden staging folder and renamed into place in one step, so a crash
never leaves a half-written version visible, and two runs publishing under one name at once get
different version numbers (the rename of the loser fails and it takes the next number).

``NAME`` refers to the latest version, ``NAME:VERSION`` to a pinned one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunesmith.core import paths
from tunesmith.core.config import Method, Task, check_name
from tunesmith.core.errors import TunesmithError
from tunesmith.core.results import Result
from tunesmith.evaluation.results import Comparison
from tunesmith.registry.manifest import Manifest

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def manifest(self) -> Manifest:
        """Read from disk on each access: cheap, and a version's manifest never changes once published."""
        return Manifest.model_validate_json((self.path / MANIFEST).read_text())

    def summary(self) -> VersionSummary:
        manifest = self.manifest
        return VersionSummary(
            name=self.name,
            version=self.version,
            ref=self.ref,
            base=manifest.base.name,
            task=manifest.task,
            method=manifest.method,
            created=manifest.created,
            metrics=manifest.metrics,
            path=str(self.path),
        )


class VersionSummary(Result):
    """A line of ``tunesmith models list``."""

    name: str
    version: int
    ref: str
    base: str
    task: Task
    method: Method
    created: str | None
    metrics: Comparison
    path: str


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    try:
        check_name(name)
    except ValueError as err:
        raise TunesmithError(str(err)) from None
    if not version:
        return name, None
    if not version.isdigit():
        raise TunesmithError(f"invalid version in {ref!r}: use NAME or NAME:VERSION with a number")
    return name, int(version)


def staging_dir() -> Path:
    """A fresh hidden folder inside the registry to assemble a version in (same filesystem)."""
    root = paths.registry_dir()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=root))


def publish(name: str, staging: Path) -> ModelVersion:
    """Move a fully written staging folder into place as the next version of ``name``."""
    check_name(name)
    folder = paths.registry_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        version = 1 + max(_issued_numbers(name), default=0)
        target = folder / str(version)
        manifest = json.loads((staging / MANIFEST).read_text())
        manifest["name"], manifest["version"] = name, version
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(staging, target)  # fails if another process took this number first
            return ModelVersion(name, version, target)
        except OSError:
            if not target.exists():
                raise
    raise TunesmithError(f"could not publish {name}: too many concurrent versions")


def _issued_numbers(name: str) -> list[int]:
    """Every number ever given out under ``name``: live versions and removal tombstones, so a
    pinned NAME:N never comes to mean a different model after NAME:N was removed."""
    folder = paths.registry_dir() / name
    if not folder.is_dir():
        return []
    numbers = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    return numbers + [int(p.name.split("-")[-1]) for p in folder.glob(".removed-*")]


def versions(name: str) -> list[ModelVersion]:
    folder = paths.registry_dir() / name
    if not folder.is_dir():
        return []
    found = [
        ModelVersion(name, int(p.name), p) for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda v: v.version)


def list_models() -> list[ModelVersion]:
    root = paths.registry_dir()
    if not root.is_dir():
        return []
    result: list[ModelVersion] = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            result += versions(folder.name)
    return result


def get(ref: str) -> ModelVersion:
    name, version = parse_ref(ref)
    available = versions(name)
    if not available:
        known = sorted({v.name for v in list_models()})
        hint = f"; models: {', '.join(known)}" if known else "; the registry is empty"
        raise TunesmithError(f"no model named {name!r} in the registry{hint}")
    if version is None:
        return available[-1]
    for candidate in available:
        if candidate.version == version:
            return candidate
    raise TunesmithError(f"{name} has no version {version}; versions: {', '.join(str(v.version) for v in available)}")


def dependents(refs: set[str]) -> dict[str, list[str]]:
    """Versions outside ``refs`` built on a full fine-tune in ``refs``: {full fine-tune: [versions]}.

    A LoRA ancestor's adapter is copied into each descendant (models.lineage), so removing it loses
    nothing; a full fine-tune's weights are only referred to, so its descendants stop loading."""
    found: dict[str, list[str]] = {}
    for version in list_models():
        if version.ref in refs:
            continue
        for ancestor in version.manifest.lineage:
            if ancestor.adapter is None and ancestor.ref in refs:
                found.setdefault(ancestor.ref, []).append(version.ref)
    return found


def remove(ref: str, force: bool = False) -> list[ModelVersion]:
    """Delete one version (NAME:VERSION) or every version of a name (NAME). Refused, unless ``force``,
    when another version is built on a full fine-tune being removed (see ``dependents``)."""
    name, version = parse_ref(ref)
    doomed = [get(ref)] if version is not None else versions(name)
    if not doomed:
        get(ref)  # raises the not-found message
    blocked = {} if force else dependents({entry.ref for entry in doomed})
    if blocked:
        listed = "; ".join(f"{full} is the starting point of {', '.join(refs)}" for full, refs in blocked.items())
        raise TunesmithError(
            f"nothing removed: {listed} (a full fine-tune's weights are not copied into the "
            f"models built on it, so they would no longer load). Remove those first, or pass "
            f"--force to remove {ref} anyway"
        )
    for entry in doomed:
        (entry.path.parent / f".removed-{entry.version}").touch()  # the number is never reused
        # Rename first so a crash mid-delete never leaves a half-version that looks valid.
        trash = entry.path.with_name(f".trash-{entry.version}-{os.getpid()}")
        os.rename(entry.path, trash)
        shutil.rmtree(trash)
    return doomed


def version_for_job(name: str, job_id: str) -> ModelVersion | None:
    """The version of ``name`` a `tunesmith serve` job published, if any (its manifest's provenance)."""
    for version in versions(name):
        if (version.manifest.provenance or {}).get("job") == job_id:
            return version
    return None
