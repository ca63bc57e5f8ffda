"""The Python API stays callable after the library's own modules are imported (a subpackage named like
an API function would replace it on the package)."""

import tunesmith
import tunesmith.workflows.evaluate  # noqa: F401  (what `train` and `eval` import)
import tunesmith.workflows.train  # noqa: F401


def test_api_functions_are_not_shadowed_by_subpackages():
    for name in (
        "check_data",
        "train",
        "evaluate",
        "learning_curve",
        "load",
        "generate",
        "list_models",
        "get_model",
        "remove_model",
        "list_bases",
    ):
        assert callable(getattr(tunesmith, name)), name
        assert getattr(tunesmith, name).__module__ == "tunesmith", name
