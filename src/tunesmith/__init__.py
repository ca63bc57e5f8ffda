"""tunesmith: fine-tune small language models on your own data and prove that it helped.

The Python API (``tunesmith.api``) mirrors the CLI::

    import tunesmith
    report = tunesmith.check_data("reviews.jsonl")                 # tunesmith data check
    result = tunesmith.train(tunesmith.TrainConfig(data="reviews.jsonl", name="reviews"))
    figures = tunesmith.evaluate("reviews", "test.jsonl")           # tunesmith eval
    model = tunesmith.load("reviews")                               # registry, base name or folder
    print(tunesmith.generate(model, "The soup was cold."))         # tunesmith generate
    tunesmith.list_models(); tunesmith.get_model("reviews:1"); tunesmith.remove_model("reviews")
    tunesmith.export_model("reviews", "gguf", "reviews-gguf")        # tunesmith models export
    tunesmith.list_bases()                                          # tunesmith base list

The names are loaded on first use: ``import tunesmith`` (and so ``tunesmith --help``) does not import
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunesmith.core.version import VERSION

if TYPE_CHECKING:
    from tunesmith.api import (
        DataError,
        TrainConfig,
        TunesmithError,
        chat,
        check_data,
        data_from_corrections,
        distill,
        evaluate,
        export_model,
        generate,
        get_model,
        learning_curve,
        list_bases,
        list_models,
        load,
        load_config,
        remove_model,
        review,
        run_server,
        train,
    )

__version__ = VERSION

__all__ = [
    "TrainConfig",
    "load_config",
    "DataError",
    "TunesmithError",
    "check_data",
    "train",
    "evaluate",
    "learning_curve",
    "load",
    "generate",
    "chat",
    "data_from_corrections",
    "distill",
    "review",
    "run_server",
    "list_models",
    "get_model",
    "remove_model",
    "export_model",
    "list_bases",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tunesmith.api"), name)
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
