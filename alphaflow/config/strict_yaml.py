"""YAML that refuses a key written twice in one mapping (PyYAML keeps the last one without a word).

A sweep file with two variants of one name, or a config with ``optim`` twice, would otherwise run something
other than what its author reads. ``safe_load_unique(text)`` is ``yaml.safe_load`` with that refusal: a
``yaml.constructor.ConstructorError`` whose ``problem_mark`` is the second occurrence (``read_yaml`` turns it
into one line with the file, line and column).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["safe_load_unique"]


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # merge keys (<<) first: a merged key may be overridden on purpose
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r} (first at line {first.line + 1}); each key may appear once",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a mapping that holds one key twice (module docstring)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass
