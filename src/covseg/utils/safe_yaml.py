"""YAML read one way everywhere: PyYAML's safe loader, without alias bombs or repeated keys.

Configs come from other people. A "billion laughs" document (aliases of aliases) is a few
hundred bytes that expand to billions of entries once anything walks it (validation, the
saved ``config.yaml``), so aliases may add at most :data:`MAX_ALIAS_EXPANSION` entries beyond
those written, and an alias inside its own anchor (a cycle) is refused. A key given twice in one
mapping is refused rather than the last one silently winning (YAML merge keys ``<<`` still work).
Every refusal is a :class:`YamlRefused`; syntax errors stay ``yaml.YAMLError``.
"""

from __future__ import annotations

from typing import Any

import yaml

#: entries that aliases may add to a document when expanded (a few reused blocks, never a bomb)
MAX_ALIAS_EXPANSION = 10_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(ValueError):
    """A YAML document covseg will not load (alias bomb, recursive alias, repeated key, too deep)."""


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, counting aliases while composing and refusing repeated keys while constructing."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        return super().compose_node(parent, index)

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and self.aliases:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise YamlRefused(f"key {key_node.value!r} is given twice (lines {seen[key]} and {line}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: Any) -> None:
    """Refuse a node graph whose aliases expand it by more than :data:`MAX_ALIAS_EXPANSION`, or that has a cycle.

    Sizes are memoised per node, so this costs one visit per distinct node however large the expansion.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlRefused("an alias refers to an entry that contains it (recursive alias)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    extra = size[id(root)] - len(size)
    if extra > MAX_ALIAS_EXPANSION:
        raise YamlRefused(
            f"its aliases expand to {extra:,} more entries than are written (at most {MAX_ALIAS_EXPANSION:,}): "
            "refused as an alias bomb"
        )


def parse_yaml(text: str) -> Any:
    """The value of one YAML document, loaded safely (see the module docstring).

    Raises :class:`YamlRefused` for what covseg refuses and ``yaml.YAMLError`` for bad syntax.
    """
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YamlRefused("nested too deeply") from None
    finally:
        loader.dispose()
