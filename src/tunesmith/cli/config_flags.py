"""Command-line flags made from a pydantic config (TrainConfig): one flag per field, its type from the
annotation, its help from the field's description. A field added to the config is a flag at once, as it
is a YAML key, a keyword of ``tunesmith.train`` and a serve job's hyperparameter."""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

METAVARS: dict[type, str] = {int: "N", float: "X", Path: "FILE"}  # str: the field's name, as argparse does


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    positional: str | None = None,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """Add a flag for every field of ``model``: ``--lora-rank`` for ``lora_rank``, other spellings from
    ``aliases`` (the first one is shown), the field ``positional`` as an optional positional argument.

    Every flag defaults to None, meaning "not given", so a config file's value stands where no flag is
    given (core.config.load_config)."""
    for name, field in model.model_fields.items():
        options = {
            "default": None,
            "help": flag_help(field),
            **_flag_type(f"{model.__name__}.{name}", field.annotation),
        }
        if name == positional:
            parser.add_argument(name, nargs="?", **options)
        else:
            flags = (aliases or {}).get(name) or ["--" + name.replace("_", "-")]
            parser.add_argument(*flags, dest=name, **options)


def config_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The value of each field's flag in ``args``; None where the flag was not given."""
    return {name: getattr(args, name) for name in model.model_fields}


def flag_help(field: FieldInfo) -> str:
    """The field's description, with its default when it has one (None means: chosen at run time)."""
    text = (field.description or "").strip()
    if not field.is_required():
        default = field.get_default(call_default_factory=True)
        if default is not None:
            text += f" (default: {_shown(default)})"
    return text.replace("%", "%%")  # argparse formats help with %


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _flag_type(where: str, annotation: Any) -> dict[str, Any]:
    """argparse's type, choices or action for a field's annotation; ``X | None`` is read as X (a flag not
    given is None already)."""
    members = list(get_args(annotation)) if get_origin(annotation) in (Union, types.UnionType) else [annotation]
    members = [member for member in members if member is not type(None)]
    words = [value for member in members if get_origin(member) is Literal for value in get_args(member)]
    kinds = [member for member in members if get_origin(member) is not Literal]
    if not kinds and words:
        return {"choices": words}
    if kinds == [bool] and not words:
        return {"action": argparse.BooleanOptionalAction}
    if len(kinds) == 1 and kinds[0] in (int, float, str, Path) and not words:
        return {"type": kinds[0], "metavar": METAVARS.get(kinds[0])}
    if kinds == [list[str]]:
        return {"type": _comma_list(tuple(words)), "metavar": "|".join([*map(str, words), "A,B,..."])}
    raise TypeError(f"{where}: no command-line flag for {annotation!r}; add the type to tunesmith.cli.config_flags")


def _comma_list(words: tuple[str, ...]) -> Callable[[str], str | list[str]]:
    """A comma-separated list (``q_proj,v_proj``), or one of ``words`` as it is (``all-linear``)."""

    def parse(text: str) -> str | list[str]:
        return text if text in words else [item.strip() for item in text.split(",") if item.strip()]

    return parse
