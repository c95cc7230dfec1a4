"""One rule for turning what summaries, reports and checkpoint metadata hold into plain JSON
types, for every JSON file and node attribute the engine writes. Standard library only: the
Slicer module imports it on Slicer 5.8's Python 3.9, before numpy or torch may be installed."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["jsonable", "write_tables"]


def jsonable(value: Any) -> Any:
    """`value` in plain JSON types, ready for `json.dumps`:

    - mappings become dicts with str keys, lists and tuples become lists (recursively);
    - numpy scalars and arrays (and tensors) become Python numbers and nested lists (their
      ``tolist()``), dataclass instances dicts of their fields;
    - paths, torch dtypes and devices become their str;
    - a float that is not finite becomes None: JSON has no NaN or infinity, and a reader
      (a browser, ``jq``) refuses the bare ``NaN`` Python would write.

    Anything else is returned as it is, for `json.dumps` to refuse by name.
    """
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float):  # numpy's float64 too (a float subclass)
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    if callable(getattr(value, "tolist", None)):  # numpy scalar/array, torch tensor
        return jsonable(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, os.PathLike) or type(value).__module__ == "torch":  # dtype, device
        return str(value)
    return value


def write_tables(folder: str | os.PathLike, stem: str, result: Any, markdown: str) -> None:
    """A check's result as FOLDER/STEM.json (`jsonable`, indented) beside its Markdown table
    FOLDER/STEM.md; the folder is made if missing."""
    import json
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(jsonable(result), indent=1))
    (out / f"{stem}.md").write_text(markdown)

