"""``tunesmith models export``: one registry version (or a base model) out in one format, checked, then put in place.

Everything is written into a hidden folder beside ``--out`` and renamed to it only once it is whole and has passed
its parity check, so a crash, a full disk or a failed check leaves nothing half-written behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.core.config import EXPORT_DTYPES, EXPORT_FORMATS, GGUF_TYPES, ExportDtype, ExportFormat, GgufType
from tunesmith.core.durable import fsync_dir
from tunesmith.core.errors import ExportParityError, TunesmithError
from tunesmith.core.results import Result
from tunesmith.export import hf, llama_cpp, ollama, peft_adapter
from tunesmith.export.gguf_file import write_gguf
from tunesmith.export.parity import Exported, ParityReport, check_parity, reference_outputs
from tunesmith.export.source import ExportSource, resolve_source
from tunesmith.models.base import parameter_count
from tunesmith.models.load import quiet_transformers

MANIFEST = "tunesmith-export.json"
# Bytes a parameter takes on disk in each precision (q8_0: 34 bytes a block of 32; Q4_1: 20), for the space check.
BYTES_PER_PARAMETER = {"fp32": 4, "f32": 4, "fp16": 2, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "source": 1}
# The parity check's precision name for each GGUF tensor type.
GGUF_PRECISION = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "q8_0": "q8_0", "source": "source"}


class BaseInfo(Result):
    name: str
    sha256: str  # of the base's weight files as tunesmith converted them (models.base.weights_hash)
    path: str | None = None  # peft: the folder the adapter's config names as its base


class ExportResult(Result):
    ref: str
    format: ExportFormat
    out: str
    precision: str  # hf: --dtype; gguf: --gguf-type; peft: the adapter's own (fp32)
    files: list[str]
    bytes: int
    base: BaseInfo
    task: str
    system_prompt: str | None = None
    labels: list[str] | None = None
    notes: list[str] = []  # what a user of the export should know (vLLM's limits, the Modelfile, ...)
    vllm_max_lora_rank: int | None = None
    parity: ParityReport | None = None
    llama_cpp: ParityReport | None = None  # gguf, where llama-cpp-python is installed: the file run by llama.cpp


def export_model(
    ref: str,
    format: ExportFormat,
    out: Path,
    dtype: ExportDtype = "fp32",
    gguf_type: GgufType = "f16",
    with_base: bool = False,
    check: bool = True,
    say: Callable[[str], None] = print,
) -> ExportResult:
    _check_choices(format, dtype, gguf_type)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunesmithError(f"{out} already exists and is not an empty folder: choose another --out or remove it")
    quiet_transformers()
    source = resolve_source(ref)
    _check_request(source, format, gguf_type, with_base)
    adapter_config = json.loads((source.adapter_folder / "adapter_config.json").read_text()) if format == "peft" else {}
    notes = _vllm_notes(adapter_config) if format == "peft" else []
    for note in notes:
        say(note)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise TunesmithError(f"cannot write the export to {out}: {problem.strerror or problem}") from None
    _check_space(source, format, dtype if format == "hf" else gguf_type, with_base, out.parent)
    precision = {"hf": dtype, "peft": "fp32", "gguf": GGUF_PRECISION[gguf_type]}[format]

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        say(f"Loading {source.ref} in fp32 (adapters merged), the model as tunesmith serves it ...")
        reference = source.reference()
        say(f"Writing the {format} export ...")
        load_export, written_notes = _write(source, reference, format, staging, out, dtype, gguf_type, with_base)
        parity = in_llama_cpp = None
        if check:
            say("Loading the export back and checking it against the model ...")
            probes, ours = reference_outputs(reference)
            parity = check_parity(probes, ours, load_export(), precision)
            gguf_path = next(staging.glob("*.gguf"), None)
            if gguf_path is not None and llama_cpp.available():
                say("Running the GGUF in llama.cpp (llama-cpp-python) and checking it too ...")
                in_llama_cpp, failure = llama_cpp.check_in_llama_cpp(gguf_path, probes, ours, precision)
                if failure:  # the transformers check stands: a crash inside llama.cpp is said, not held against it
                    say(failure)
                    written_notes.append(failure)
            _refuse_drift([report for report in (parity, in_llama_cpp) if report is not None], source.ref)
        files = sorted(path for path in staging.rglob("*") if path.is_file())
        result = ExportResult(
            ref=source.ref,
            format=format,
            out=str(out),
            precision=precision,
            files=[str(path.relative_to(staging)) for path in files] + [MANIFEST],
            bytes=sum(path.stat().st_size for path in files),
            base=BaseInfo(
                name=source.base_name,
                sha256=source.base_sha256(),
                path=str(_peft_base(source, out, with_base)) if format == "peft" else None,
            ),
            task=reference.task,
            system_prompt=reference.system_prompt,
            labels=reference.labels,
            notes=notes + written_notes,
            vllm_max_lora_rank=peft_adapter.vllm_max_lora_rank(adapter_config) if format == "peft" else None,
            parity=parity,
            llama_cpp=in_llama_cpp,
        )
        (staging / MANIFEST).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        _put_in_place(staging, out)
        return result
    except OSError as problem:
        raise TunesmithError(
            f"cannot write the export to {out}: {problem.strerror or problem}; nothing was written"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed


def _check_choices(format: str, dtype: str, gguf_type: str) -> None:
    """For the Python API, where no argparse checks the choices."""
    for value, choices, what in (
        (format, EXPORT_FORMATS, "--format"),
        (dtype, EXPORT_DTYPES, "--dtype"),
        (gguf_type, GGUF_TYPES, "--gguf-type"),
    ):
        if value not in choices:
            raise TunesmithError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _vllm_notes(adapter_config: dict) -> list[str]:
    refused, ignored = peft_adapter.vllm_problems(adapter_config)
    return [f"vLLM refuses: {problem}" for problem in refused] + [f"vLLM ignores: {problem}" for problem in ignored]


def _put_in_place(staging: Path, out: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; the export is an ordinary folder
    if out.exists():
        out.rmdir()  # empty, checked before anything was written
    os.rename(staging, out)
    fsync_dir(out.parent)


def _refuse_drift(reports: list[ParityReport], ref: str) -> None:
    failed = [report for report in reports if not report.passed]
    if failed:
        problems = "; ".join(f"loaded with {r.loaded_with}: {'; '.join(r.problems)}" for r in failed)
        raise ExportParityError(
            f"the export does not answer like {ref} ({problems}). Nothing was written "
            "(--no-check writes it without the check)",
            reports,
        )


def _check_request(source: ExportSource, format: ExportFormat, gguf_type: GgufType, with_base: bool) -> None:
    if format == "peft":
        if source.version is None:
            raise TunesmithError(f"{source.ref} is a base model: there is no adapter to export; use --format hf")
        source.adapter_folder  # noqa: B018  # raises, with the hint, for a full fine-tune
        if source.builds_on_fine_tunes and not with_base:
            assert source.start is not None
            ancestors = ", ".join(ancestor.ref for ancestor in source.start.lineage)
            raise TunesmithError(
                f"{source.ref} is built on {ancestors}: its adapter belongs on those weights, not on the base. "
                "Add --with-base to write them merged into a base folder beside the adapter, or use --format hf"
            )
    elif with_base:
        raise TunesmithError("--with-base goes with --format peft (hf and gguf exports hold every weight)")
    if format == "gguf" and gguf_type == "source" and source.source_gguf() is None:
        raise TunesmithError(
            f"--gguf-type source keeps the tensor types of the GGUF the base came from; {source.ref} does not sit "
            "on one (only the embedded base does). Choose f32, f16, bf16 or q8_0"
        )


def _check_space(source: ExportSource, format: ExportFormat, kind: str, with_base: bool, folder: Path) -> None:
    parameters = parameter_count(source.weights_folder) or 0
    if format == "peft":
        needed = (source.adapter_folder / "adapter_model.safetensors").stat().st_size
        needed += parameters * 4 if with_base else 0
    else:
        needed = int(parameters * BYTES_PER_PARAMETER[kind])
    free = shutil.disk_usage(folder).free
    if needed * 1.05 > free:
        raise TunesmithError(
            f"not enough space in {folder}: the export needs about {needed / 1e6:,.0f} MB and "
            f"{free / 1e6:,.0f} MB are free"
        )


def _write(
    source: ExportSource,
    reference,
    format: ExportFormat,
    staging: Path,
    out: Path,
    dtype: ExportDtype,
    gguf_type: GgufType,
    with_base: bool,
):
    """Write the export into ``staging``; return how to load it back the way its users do, and notes."""
    notes: list[str] = []
    if format == "hf":
        hf.write_hf(reference.model, source.tokenizer_folder, staging, dtype)

        def load_hf() -> Exported:
            model = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
            return Exported(model, AutoTokenizer.from_pretrained(staging), "transformers")

        return load_hf, notes
    if format == "peft":
        base_path = _peft_base(source, out, with_base)
        base_model = source.starting_model() if with_base else None
        peft_adapter.write_peft(source.adapter_folder, source.tokenizer_folder, staging, str(base_path), base_model)

        def load_peft() -> Exported:
            from peft import PeftModel

            folder = staging / peft_adapter.BASE_FOLDER if with_base else source.base_folder
            base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(staging)).eval()
            return Exported(model, AutoTokenizer.from_pretrained(staging), "PEFT")

        return load_peft, notes
    name = (source.ref if source.version else Path(source.ref).name).replace(":", "-")
    filename = f"{name}.gguf"
    summary = write_gguf(
        staging / filename,
        reference.model.state_dict(),
        source.model_config(),
        source.tokenizer_folder,
        reference.tokenizer.chat_template,
        gguf_type,
        source.ref if source.version else None,
        source.source_gguf(),
    )
    types = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.tensor_types.items()))
    notes.append(f"tensors: {types}" + (f"; {summary.copied} kept byte for byte" if gguf_type == "source" else ""))
    text = ollama.modelfile(filename, reference.tokenizer, reference.system_prompt)
    if text is None:
        notes.append("no Modelfile: the chat template is not ChatML; write Ollama's TEMPLATE by hand")
    else:
        (staging / "Modelfile").write_text(text)

    def load_gguf() -> Exported:
        model = AutoModelForCausalLM.from_pretrained(staging, gguf_file=filename, dtype=torch.float32).eval()
        return Exported(model, AutoTokenizer.from_pretrained(staging, gguf_file=filename), "transformers (GGUF)")

    return load_gguf, notes


def _peft_base(source: ExportSource, out: Path, with_base: bool) -> Path:
    """The base an exported adapter names: the copy written beside it, or tunesmith's own."""
    return out.resolve() / peft_adapter.BASE_FOLDER if with_base else source.base_folder
