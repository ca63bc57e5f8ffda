"""Typed results that read like the JSON they are written as.

metrics.jsonl, manifest.json and ``tunesmith eval --json`` are public contracts: scripts read them by
key. So each typed result (a pydantic model that the code reads by attribute) dumps to exactly that
JSON, and also answers ``result["loss"]``, ``"val_loss" in result`` and ``result.get(...)`` the way
the JSON object does. A field that was never set (a validation loss on a step without validation) is
absent from the JSON, as it was from the dict it replaces; one set to None is written as null.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """The JSON object: only the fields that were set, in declaration order."""
        return self.model_dump(mode="json", exclude_unset=True)

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_json()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)
