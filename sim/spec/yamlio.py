"""Reading YAML safely: safe loader only, duplicate keys rejected, sizes bounded, and every
failure turned into a SpecError that names the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

MAX_FILE_BYTES = 4_000_000  # a scenario or preset is a few KB; anything this large is a mistake


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line "
                f"{seen[key].start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, file: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = exc.problem or str(exc)
        if "could not determine a constructor" in problem:
            tag = problem.split("tag", 1)[-1].strip()
            raise SpecError(f"YAML tag {tag} is not allowed{where}: racksim reads plain "
                            "YAML only and never constructs objects from tags",
                            file=file, fix="remove the tag and write the value as a plain "
                            "number, string, list or mapping") from None
        raise SpecError(f"{problem}{where}", file=file,
                        fix="give each key once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"not valid YAML{where}: {problem}", file=file,
                        fix="check indentation, colons and quotes around that line") from None


def read_yaml(path: Path) -> Any:
    file = str(path)
    if not path.is_file():
        raise SpecError("file not found", file=file,
                        fix="check the path (relative paths are relative to the current "
                            "directory on the command line)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SpecError(f"file is {size / 1e6:.1f} MB; scenario and preset files are limited "
                        f"to {MAX_FILE_BYTES / 1e6:.0f} MB", file=file,
                        fix="keep large data (request traces) in a CSV referenced by path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError("file is not UTF-8 text", file=file,
                        fix="save it as UTF-8 YAML") from None
    return parse_yaml(text, file)
