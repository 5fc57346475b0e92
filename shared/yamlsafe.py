"""Bounded YAML parsing for text that comes from outside: catalog files, placeholders, request bodies.

Owns the limits every such document goes through: input size, nesting depth, alias uses and the number of nodes
after alias expansion (the "billion laughs" bomb). Values are PyYAML's safe loader's (libyaml's `CSafeLoader` when
built), but nodes are composed here, without recursion, from the parser's events: libyaml's own composer recurses
in C and crashes the process on deeply nested input, and counting while composing rejects a bomb before anything
expands it. Scalars resolve as in PyYAML (YAML 1.1: `yes` is a boolean, `2024-01-01` a `datetime.date`), where
Backstage's parser follows YAML 1.2 and keeps both as strings.

Text that provably cannot break a limit (no `&` or `*`, so no anchors or aliases; no line indented past what the
depth limit allows; flow collections never nested; no more bytes than the node limit) takes libyaml's own composer
and a lean constructor instead, more than twice as fast on catalog files; the values are the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    Event,
    ScalarEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 1_000_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(ValueError):
    """YAML that cannot be parsed or breaks a limit; `line` and `column` (1-based) say where, when known."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message if line is None else f"{message} at line {line}, column {column}")
        self.line = line
        self.column = column

    @classmethod
    def at(cls, message: str, mark: Any) -> YamlError:
        """An error at a PyYAML `Mark` (0-based), or at no place when `mark` is None."""
        if mark is None:
            return cls(message)
        return cls(message, line=mark.line + 1, column=mark.column + 1)


class _Fatal(Exception):
    """Carries a `YamlError` after which no later document of the stream is read."""

    def __init__(self, error: YamlError) -> None:
        super().__init__(str(error))
        self.error = error


def load_yaml_documents(
    text: str | bytes,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = MAX_ALIASES,
    max_nodes: int = MAX_NODES,
) -> list[Any]:
    """Every non-empty document of a YAML stream, or a `YamlError` for the first problem."""
    documents = []
    limits = {"max_bytes": max_bytes, "max_depth": max_depth, "max_aliases": max_aliases, "max_nodes": max_nodes}
    for _, value in iter_yaml_documents(text, **limits):
        if isinstance(value, YamlError):
            raise value
        documents.append(value)
    return documents


def iter_yaml_documents(
    text: str | bytes,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = MAX_ALIASES,
    max_nodes: int = MAX_NODES,
) -> Iterator[tuple[int, Any | YamlError]]:
    """(index in the stream, value or `YamlError`) per non-empty document; stops after an error it cannot pass."""
    if _size(text, max_bytes) > max_bytes:
        yield 0, YamlError(f"YAML input is larger than {max_bytes} bytes")
        return
    budget = _Budget(max_depth=max_depth, max_aliases=max_aliases, max_nodes=max_nodes)
    yield from _documents(text, budget)


def _size(text: str | bytes, max_bytes: int) -> int:
    # A string longer than the limit in characters is too long in bytes too; only shorter ones are encoded.
    if isinstance(text, bytes) or len(text) > max_bytes:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class _Budget:
    """Limits of one stream; aliases and expanded nodes add up over all its documents."""

    max_depth: int
    max_aliases: int
    max_nodes: int
    aliases: int = 0
    nodes: int = 0

    def spend(self, mark: Any, *, nodes: int, aliases: int = 0) -> None:
        self.nodes += nodes
        self.aliases += aliases
        if self.aliases > self.max_aliases:
            raise _Fatal(YamlError.at(f"YAML uses more than {self.max_aliases} aliases", mark))
        if self.nodes > self.max_nodes:
            raise _Fatal(YamlError.at(f"YAML expands to more than {self.max_nodes} nodes", mark))


def _documents(text: str | bytes, budget: _Budget) -> Iterator[tuple[int, Any | YamlError]]:
    if not _within_limits(text, budget):
        yield from _composed_documents(text, budget)
        return
    done = 0
    try:
        for index, value in _plain_documents(text):
            yield index, value
            done = index + 1
        return
    except (yaml.YAMLError, ValueError, OverflowError):
        pass  # read again below, which reports the problem document by document as it always has
    yield from ((index, value) for index, value in _composed_documents(text, budget) if index >= done)


def _composed_documents(text: str | bytes, budget: _Budget) -> Iterator[tuple[int, Any | YamlError]]:
    index = 0
    loader = None
    try:
        loader = _Loader(text)
        loader.get_event()  # StreamStartEvent
        while not loader.check_event(StreamEndEvent):
            loader.get_event()  # DocumentStartEvent
            value = _document(loader, budget)
            if value is not None:
                yield index, value
            index += 1
    except _Fatal as exc:
        yield index, exc.error
    except yaml.YAMLError as exc:
        yield index, _too_deep(exc, budget) or _from_pyyaml(exc)
    finally:
        if loader is not None:
            loader.dispose()


_FLOW_MARKS = b"[]{}\"'#"
_NOT_FLOW_MARKS = bytes(sorted(set(range(256)) - set(_FLOW_MARKS)))


def _within_limits(text: str | bytes, budget: _Budget) -> bool:
    """Whether `text` cannot hold an alias, a document nested deeper than the limit, or more nodes than the limit.

    Without `&` and `*` there are no anchors or aliases. A block collection nested in another starts at a greater
    column, or at the same one for a sequence inside a mapping, so every two levels of block nesting need one
    more column of indentation or compact indicators (`- `, `? `, `: `) on some line; flow collections add one
    level when none opens before the previous one closes (a quote or comment could hide a closer, so either
    counts as an opener). Every node takes at least one byte. Checked with bytes operations and two small
    regular expressions: a tenth of the time libyaml takes to parse the text."""
    columns = (budget.max_depth - 1) // 2 - 2
    if columns < 1 or len(text) > budget.max_nodes:
        return False
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if b"&" in data or b"*" in data:
        return False
    deep_line = rb"[ \t?:-]{%d}" % columns
    if re.match(deep_line, data) or re.search(rb"\n" + deep_line, data):
        return False
    return re.search(rb"[\[{][\[{\"'#]", data.translate(None, _NOT_FLOW_MARKS)) is None


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


def _plain_documents(text: str | bytes) -> Iterator[tuple[int, Any]]:
    """Documents of text `_within_limits`, composed by libyaml; raises PyYAML's errors."""
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            value = _value(loader, loader.get_node())
            loader.constructed_objects.clear()
            if value is not None:
                yield index, value
            index += 1
    finally:
        loader.dispose()


def _value(loader: Any, node: Node) -> Any:
    """What PyYAML's safe constructor makes of `node`, without its generator per collection: plain strings, maps
    with string keys and sequences are built here (recursion is bounded: the text is `_within_limits`); every
    other node goes to the constructor."""
    kind = type(node)
    if kind is ScalarNode:
        return node.value if node.tag == _STR else loader.construct_object(node, deep=True)
    if kind is SequenceNode and node.tag == _SEQ:
        return [_value(loader, child) for child in node.value]
    if (
        kind is MappingNode
        and node.tag == _MAP
        and all(type(key) is ScalarNode and key.tag == _STR for key, _ in node.value)
    ):
        # As PyYAML: a repeated key keeps its first place and its last value.
        return {key.value: _value(loader, child) for key, child in node.value}
    return loader.construct_object(node, deep=True)


def _document(loader: Any, budget: _Budget) -> Any:
    composer = _Composer(loader, budget)
    try:
        node = composer.compose()
    except YamlError as exc:
        composer.skip_rest()
        return exc
    try:
        return loader.construct_document(node)
    # The constructor raises ValueError itself for out-of-range dates and over-long integers.
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        return _from_pyyaml(exc)


def _too_deep(exc: yaml.YAMLError, budget: _Budget) -> YamlError | None:
    """libyaml's own depth limit (1,000 levels, libyaml 0.2.6 in PyYAML 6.0.4's wheels) as our limit's error.

    Its scanner reads a flow collection's openers ahead of the first event, so it stops before our composer
    sees level 65; the text is nested deeper than our limit either way.
    """
    if isinstance(exc, yaml.MarkedYAMLError) and "maximum nesting depth" in (exc.problem or ""):
        return YamlError.at(_too_deep_message(budget), exc.problem_mark)
    return None


def _too_deep_message(budget: _Budget) -> str:
    return f"YAML is nested deeper than {budget.max_depth} levels"


def _from_pyyaml(exc: Exception) -> YamlError:
    if isinstance(exc, yaml.MarkedYAMLError):
        message = ": ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        return YamlError.at(message, exc.problem_mark or exc.context_mark)
    return YamlError(" ".join(str(exc).split()))


@dataclass
class _Open:
    """A collection whose end event has not come yet, with its size after alias expansion so far."""

    node: CollectionNode
    anchor: str | None
    size: int = 1
    key: Node | None = None

    def add(self, child: Node, size: int) -> None:
        self.size += size
        if isinstance(self.node, SequenceNode):
            self.node.value.append(child)
        elif self.key is None:
            self.key = child
        else:
            self.node.value.append((self.key, child))
            self.key = None


class _Composer:
    """Builds one document's node graph from parser events as PyYAML's Composer does, but counting as it goes."""

    def __init__(self, loader: Any, budget: _Budget) -> None:
        self.loader = loader
        self.budget = budget
        # anchor -> (node, expanded size); the size is None while the anchored collection is still open.
        self.anchors: dict[str, tuple[Node, int | None]] = {}
        self.stack: list[_Open] = []
        self.root: Node | None = None

    def compose(self) -> Node | None:
        """The document's root node; reads through the document's end event."""
        while not isinstance(event := self.loader.get_event(), DocumentEndEvent):
            self._on(event)
        return self.root

    def skip_rest(self) -> None:
        """Reads past the rest of a failed document, still bounded in depth."""
        depth = len(self.stack)
        while not isinstance(event := self.loader.get_event(), DocumentEndEvent):
            if isinstance(event, CollectionStartEvent):
                self._check_depth(depth, event)
                depth += 1
            elif isinstance(event, CollectionEndEvent):
                depth -= 1

    def _check_depth(self, depth: int, event: Event) -> None:
        # Fatal, not per document: libyaml's scanner slows quadratically with flow nesting, so reading on is no option.
        if depth >= self.budget.max_depth:
            raise _Fatal(YamlError.at(_too_deep_message(self.budget), event.start_mark))

    def _on(self, event: Event) -> None:
        if isinstance(event, ScalarEvent):
            self._scalar(event)
        elif isinstance(event, AliasEvent):
            self._alias(event)
        elif isinstance(event, CollectionStartEvent):
            self._open(event)
        else:
            self._close(event)

    def _scalar(self, event: ScalarEvent) -> None:
        tag = self._tag(ScalarNode, event, event.value)
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        self.budget.spend(event.start_mark, nodes=1)
        if event.anchor is not None:
            self.anchors[event.anchor] = (node, 1)
        self._attach(node, 1)

    def _alias(self, event: AliasEvent) -> None:
        if event.anchor not in self.anchors:
            raise YamlError.at(f"found undefined alias {event.anchor!r}", event.start_mark)
        node, size = self.anchors[event.anchor]
        if size is None:
            raise YamlError.at(f"alias {event.anchor!r} refers to a collection that contains it", event.start_mark)
        self.budget.spend(event.start_mark, nodes=size, aliases=1)
        self._attach(node, size)

    def _open(self, event: CollectionStartEvent) -> None:
        self._check_depth(len(self.stack), event)
        kind = SequenceNode if isinstance(event, SequenceStartEvent) else MappingNode
        node = kind(self._tag(kind, event, None), [], event.start_mark, None, flow_style=event.flow_style)
        self.budget.spend(event.start_mark, nodes=1)
        if event.anchor is not None:
            self.anchors[event.anchor] = (node, None)
        self.stack.append(_Open(node, event.anchor))

    def _close(self, event: Event) -> None:
        done = self.stack.pop()
        done.node.end_mark = event.end_mark
        # A later anchor of the same name, inside this collection, takes precedence.
        if done.anchor is not None and self.anchors[done.anchor][0] is done.node:
            self.anchors[done.anchor] = (done.node, done.size)
        self._attach(done.node, done.size)

    def _attach(self, node: Node, size: int) -> None:
        if self.stack:
            self.stack[-1].add(node, size)
        else:
            self.root = node

    def _tag(self, kind: type[Node], event: Any, value: str | None) -> str:
        if event.tag is None or event.tag == "!":
            return self.loader.resolve(kind, value, event.implicit)
        return event.tag
