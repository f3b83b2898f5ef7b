"""Reading YAML from users safely: no object tags, YAML 1.2 booleans, and a bound on what aliases expand to.

    text --yaml.load(_SafeLoader)--> Python values --_check_expansion (at most MAX_YAML_VALUES values,
        MAX_YAML_DEPTH deep)--> the values, or a one-line UserError naming `source`
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pipeline.errors import UserError


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader with YAML 1.2 booleans: only true/false are booleans, so the Speech Commands
    words `yes`, `no`, `on`, `off` stay strings (YAML 1.1 would turn them into True/False)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


MAX_YAML_VALUES = 10_000  # a config holds a few hundred values; YAML aliases may not expand beyond this
MAX_YAML_DEPTH = 32


def safe_load_yaml(text: str, source: str = "YAML"):
    """yaml.safe_load (no object tags) with YAML 1.2 booleans.

    Aliases may repeat an anchored value, but the document they expand to is limited to MAX_YAML_VALUES values
    nested at most MAX_YAML_DEPTH deep: a "billion laughs" document (aliases of aliases, each doubling the
    size) or a self-referencing alias is a one-line UserError instead of a hang in the merge that copies it.
    """
    try:
        data = yaml.load(text, Loader=_SafeLoader)
    except RecursionError:
        raise UserError(f"{source}: nested deeper than Python can read; a config is a few levels deep") from None
    _check_expansion(data, source)
    return data


def _check_expansion(data: Any, source: str) -> None:
    count = 0

    def walk(value: Any, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_YAML_VALUES:
            raise UserError(f"{source}: expands to more than {MAX_YAML_VALUES} values (YAML aliases of aliases?); "
                            f"a config needs a few hundred: write the values out")
        if depth > MAX_YAML_DEPTH:
            raise UserError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep (a YAML alias that contains itself?)")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, depth + 1)

    walk(data, 0)
