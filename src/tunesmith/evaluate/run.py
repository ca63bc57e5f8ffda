"""``tunesmith eval MODEL --data FILE``: the fine-tuned model and its base on held-out data."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.check import check_data
from tunesmith.data.prepare import Splits, build_rows
from tunesmith.errors import DataError
from tunesmith.evaluate.compare import evaluate_split, helped
from tunesmith.inference import load
from tunesmith.models.base import resolve_base
from tunesmith.models.load import load_model


def evaluate(ref: str, data: Path) -> dict:
    """Metrics of the fine-tuned model and of its base on ``data``, in one stable shape."""
    loaded = load(ref, merge=False)
    if loaded.version is None:
        raise DataError(f"{ref} is a base model; give a fine-tuned model from `tunesmith models list`")
    manifest = loaded.version.manifest
    config = manifest["config"]
    report = check_data(Path(data), loaded.task, loaded.tokenizer, config["max_length"],
                        labels=loaded.labels, system_prompt=loaded.system_prompt)
    if not report.ok:
        raise DataError("the evaluation data has errors:\n" + "\n".join(map(str, report.errors)), report)
    splits = Splits(report.train.examples, [], report.rendered, [])
    rows, _ = build_rows(loaded.task, splits, config["max_length"], 0.0, 0, has_val_file=False)
    examples = splits.train_examples

    def measure(model) -> dict:
        return evaluate_split(model, loaded.tokenizer, loaded.task, examples, rows,
                              loaded.labels, loaded.system_prompt)

    tuned = measure(loaded.model)
    if manifest["method"] == "lora":
        with loaded.model.disable_adapter():
            base = measure(loaded.model)
    else:
        base = measure(load_model(resolve_base(manifest["base"]["name"])).eval())
    return {"model": loaded.ref, "task": loaded.task, "data": str(data), "n": len(rows),
            "results": {"base": base, "fine_tuned": tuned}, "helped": helped(loaded.task, base, tuned)}
