"""The models the API offers, and how a requested model name becomes one to load.

Ids are the embedded base models that are available (``smollm2-135m``) and every registry version
(``NAME:VERSION``). ``NAME`` alone means its latest version at the time of the request, so a newly
published version is served without a restart. A client's string is never read as a folder path
(unlike ``tunesmith generate``): the API must not let a caller load directories from the server's disk.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tunesmith.core.errors import TunesmithError
from tunesmith.inference import loaded as inference
from tunesmith.models.base import EMBEDDED, list_bases
from tunesmith.registry import store
from tunesmith.serve.protocol import not_found


def resolve(name: str) -> str:
    """The key of a requested model: an available base name or ``NAME:VERSION``; 404 otherwise."""
    if name in EMBEDDED:
        if any(base["name"] == name and base["available"] for base in list_bases()):
            return name
        raise not_found("model", name, param="model")
    try:
        return store.get(name).ref
    except TunesmithError:  # an invalid name, no such model, no such version
        raise not_found("model", name, param="model") from None


def load(key: str, precision: str = "auto") -> inference.LoadedModel:
    """A resolved key, loaded with its adapter merged (the pool's loader)."""
    if key in EMBEDDED:
        return inference.load(key, precision=precision)
    return inference.load_version(store.get(key), precision=precision)


def model_objects() -> list[dict]:
    """``GET /v1/models``: available bases first, then registry versions by name and number."""
    objects = [_base_object(base) for base in list_bases() if base["available"]]
    for version in store.list_models():
        try:
            objects.append(_version_object(version))
        except OSError:  # removed while we listed
            continue
    return objects


def model_object(name: str) -> dict:
    key = resolve(name)
    if key in EMBEDDED:
        return next(_base_object(base) for base in list_bases() if base["name"] == key)
    return _version_object(store.get(key))


def _base_object(base: dict) -> dict:
    path = Path(base["path"])  # the converted copy; created when it was converted
    created = int(path.stat().st_mtime) if path.exists() else 0
    return {"id": base["name"], "object": "model", "created": created, "owned_by": "tunesmith"}


def _version_object(version: store.ModelVersion) -> dict:
    try:
        created = int(datetime.fromisoformat(version.manifest.created or "").timestamp())
    except (KeyError, TypeError, ValueError):
        created = int(version.path.stat().st_mtime)
    return {"id": version.ref, "object": "model", "created": created, "owned_by": "user"}
