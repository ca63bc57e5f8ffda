"""How far each export format and precision drifts from the model tunesmith serves: the parity check's figures
for every format on real fine-tunes of the embedded model, side by side, which the tolerances in
src/tunesmith/export/parity.py are set from.

Without --models it first fine-tunes the embedded model on the project's own examples (a chat set and a
classifier, 1 epoch each); with --models it exports versions already in $TUNESMITH_HOME's registry.

    .venv/bin/python bench/export_parity.py [--models REF ...]      # the "export-parity" section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, keep_registry_in, machine, table, write_section  # noqa: E402

TRAIN = {
    "support-chat": REPO / "examples" / "support" / "train.jsonl",
    "reviews-classify": REPO / "examples" / "reviews" / "train.jsonl",
}
EXPORTS = [
    ("hf", {"dtype": "fp32"}),
    ("hf", {"dtype": "bf16"}),
    ("hf", {"dtype": "fp16"}),
    ("peft", {}),
    ("gguf", {"gguf_type": "f32"}),
    ("gguf", {"gguf_type": "f16"}),
    ("gguf", {"gguf_type": "bf16"}),
    ("gguf", {"gguf_type": "q8_0"}),
    ("gguf", {"gguf_type": "source"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="registry versions to export (default: train two)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunesmith-export-parity-"))
    if not args.models:
        keep_registry_in(work / "home")

    import tunesmith
    from tunesmith.core.errors import ExportParityError

    started = time.perf_counter()
    models = args.models or []
    if not models:
        for name, data in TRAIN.items():
            tunesmith.train(tunesmith.TrainConfig(data=data, name=name, epochs=1))
            models.append(name)
    rows = []
    for ref in models:
        for number, (format, options) in enumerate(EXPORTS):
            began = time.perf_counter()
            try:
                result = tunesmith.export_model(ref, format, work / f"{ref}-{number}", say=lambda _: None, **options)
                reports, size, notes = [result.parity, result.llama_cpp], f"{result.bytes / 1e6:,.0f}", result.notes
            except ExportParityError as failed:
                reports, size, notes = failed.reports + [None], "—", []
            report = reports[0]
            cpp = reports[1] if len(reports) > 1 else None
            in_llama_cpp = next((note for note in notes if note.startswith("llama.cpp")), "—")
            if cpp is not None:
                in_llama_cpp = (
                    f"{cpp.max_logit_diff:.2g} / {cpp.top1_agreement:.2%} / {cpp.greedy_identical}/{len(cpp.probes)}"
                    + ("" if cpp.passed else " FAIL")
                )
            assert report is not None
            rows.append(
                [
                    ref,
                    format,
                    report.precision,
                    size,
                    f"{report.max_logit_diff:.2g}",
                    f"{report.top1_agreement:.2%}",
                    f"{report.greedy_identical}/{len(report.probes)}",
                    "all" if all(p.tokens_identical and p.template_identical for p in report.probes) else "no",
                    "pass" if report.passed else "FAIL: " + "; ".join(report.problems),
                    in_llama_cpp,
                    f"{time.perf_counter() - began:.0f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = ["model", "format", "precision", "MB", "max abs logit diff", "top-1 agree", "greedy same",
              "template and ids same", "check", "llama.cpp: logit diff / top-1 / greedy", "s"]  # fmt: skip
    markdown = (
        "## Export parity: each format and precision against the model as served\n\n"
        "`.venv/bin/python bench/export_parity.py` "
        + (f"`--models {' '.join(models)}`" if args.models else "")
        + f"\n\nMachine: {machine()}. {time.perf_counter() - started:.0f} s in all.\n\n"
        "Every export loaded back the way its users load it (transformers for hf and GGUF, PEFT for the adapter) "
        "and compared with the registry version in fp32, adapters merged, on the parity check's probes: "
        "the largest logit difference, the share of positions with the same top token, and greedy continuations "
        "of 32 tokens. Where llama-cpp-python is installed, the GGUF files also run in llama.cpp itself "
        "(its column).\n\n" + table(header, rows)
    )
    print(markdown)
    if not args.no_write:
        write_section("export-parity", markdown)


if __name__ == "__main__":
    main()
