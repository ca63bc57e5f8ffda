"""The models the API offers, and how a requested model name becomes one to load.

Ids are the embedded base models that are available (``smollm2-135m``) and every registry version
(``NAME:VERSION``). ``NAME`` alone means its latest version at the time of the request, so a newly
published version is served without a restart. A client's string is never read as a folder path
(unlike ``tunesmith generate``): the API must not let a caller load directories from the server's disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tunesmith.core.errors import TunesmithError
from tunesmith.inference import loaded as inference
from tunesmith.models.base import EMBEDDED, list_bases
from tunesmith.models.batch_decoder import supports
from tunesmith.registry import store
from tunesmith.serve.protocol import not_found

log = logging.getLogger("tunesmith.serve")
WEIGHTS = "weights:"  # pool keys of weights folders that LoRA versions share; never a client's string


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


def load(
    key: str, precision: str = "auto", shared: Callable[[str], inference.LoadedModel] | None = None
) -> inference.LoadedModel:
    """A resolved key (or a ``weights:`` key), loaded: the pool's loader. With ``shared`` (the pool's own
    ``get``), a LoRA version whose adapter the batched decoder can apply is its adapter over the shared
    weights it starts from, loaded once for every version on them; otherwise its adapter is merged."""
    if key in EMBEDDED:
        return inference.load(key, precision=precision)
    if key.startswith(WEIGHTS):
        return inference.load(key.removeprefix(WEIGHTS), precision=precision)
    version = store.get(key)
    if shared is not None and (start := inference.adapter_start(version)) is not None:
        base = shared(weights_key(start))
        if supports(base.model):
            over = inference.load_over(version, base)
            if isinstance(over, inference.LoadedModel):
                return over
            log.info("%s: its adapter is merged (%s cannot be applied per request)", key, over)
    return inference.load_version(version, precision=precision)


def weights_key(weights: Path) -> str:
    """The pool key of a weights folder: an embedded base's own name (the same entry its requests use)."""
    for name, base in EMBEDDED.items():
        if base.cache_path().resolve() == weights.resolve():
            return name
    return WEIGHTS + str(weights.resolve())


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
