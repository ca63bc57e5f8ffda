"""Each benchmark owns one section of bench/RESULTS.md, between markers, and rewrites only that."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = RESULTS.parents[1]
SHARED = REPO.parent / "shared" / "data"
HEADER = "# Benchmark results\n\nWritten by the scripts in `bench/`; each section says how to reproduce it.\n"


def write_section(name: str, markdown: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.is_file() else HEADER
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)


def use_shared_data(data: Path, out: Path) -> None:
    """For a benchmark on ../shared/data: exit unless ``data`` is there; otherwise make ``out`` and keep the
    registry in it (the models trained quote the data set, so they stay out of the project) and the embedded
    model's cache in the project's."""
    if not data.exists():
        sys.exit(f"{data} is missing: this benchmark needs the shared data sets")
    out.mkdir(parents=True, exist_ok=True)
    keep_registry_in(out / "home")


def keep_registry_in(home: Path) -> None:
    """The models a benchmark trains go to ``home``, not the user's registry; the embedded model's cache
    is the project's (converted once). Variables already set win."""
    os.environ.setdefault("TUNESMITH_HOME", str(home))
    os.environ.setdefault("TUNESMITH_CACHE", str(REPO / ".cache" / "tunesmith"))


def machine() -> str:
    """What the figures were measured on. The CPU's name and its bf16 hardware go first: the machines
    this project runs on vary, and that hardware alone changes bf16 speeds several-fold."""
    from tunesmith.training.hardware import cpu_bf16_unit

    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "peft"))
    return (
        f"{_cpu_name()} (bf16: {cpu_bf16_unit() or 'not native'}), {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, {versions}"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def without_error_lines(data: Path, out: Path) -> tuple[Path, list[int]]:
    """``data`` minus the lines the data check refuses, written into ``out`` (the benchmark's folder), and those
    lines' numbers. Shared data sets are other people's files: chat-corpus has one conversation split into a
    message per character, with whitespace-only messages, which `tunesmith train` rightly refuses."""
    from tunesmith.data.check import check_structure

    bad = sorted({issue.line for issue in check_structure(data).errors if issue.line})
    if not bad:
        return data, []
    kept = [line for number, line in enumerate(data.read_text().splitlines(keepends=True), 1) if number not in bad]
    target = out / f"{data.parent.name}-{data.name}"
    target.write_text("".join(kept))
    return target, bad
