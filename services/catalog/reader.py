"""Reading Backstage locations (`file` from disk, `url` over HTTP) into entity documents.

Owns what Backstage's catalog does between "here is a location" and "here are unprocessed entities": globbing the
target (`FileReaderProcessor`), splitting the YAML documents (`parseEntityYaml`), resolving `$text`, `$json` and
`$yaml` (`PlaceholderProcessor`), following Location entities (`DefaultCatalogProcessingOrchestrator`) and stamping
the location annotations (`ProcessorOutputCollector`). It returns entities and errors; validating, storing and
conflict checks belong to the caller.

`file` locations are read from disk; `url` locations through `fetch_url` (see `url_reader`), which the caller
supplies; without it they are reported as not supported. A relative target or placeholder in a document read from
a URL is resolved against that URL, as Backstage resolves it; a URL document may not name `file` targets. A
placeholder that points at an absolute URL is left in place. Unlike Backstage, which refuses relative placeholder
paths in file locations, a placeholder path here is read relative to the file that holds the entity;
`allowed_roots` keeps every file read (targets, Location targets, placeholders) inside directories the operator
chose.
"""

from __future__ import annotations

import hashlib
import json
import os.path
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from services.catalog.url_reader import FetchError
from services.catalog.validation import is_placeholder
from shared.yamlsafe import YamlError, iter_yaml_documents, load_yaml_documents

LOCATION_ANNOTATION = "backstage.io/managed-by-location"
ORIGIN_LOCATION_ANNOTATION = "backstage.io/managed-by-origin-location"
MAX_FILE_BYTES = 4 * 1024 * 1024

_GLOB_CHARS = frozenset("*?[")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}

_ReadRelative = Callable[[str], bytes]
"""Reads a placeholder's path relative to the document that holds it."""
Base = Path | str
"""What relative targets resolve against: a file's directory, or the URL of a document read over HTTP."""


@dataclass(frozen=True)
class ReadEntity:
    """An entity document as read, annotated with the location it came from."""

    document: dict[str, Any]
    location_key: str
    location: str


def registered_location(type: str, target: str, location_key: str) -> ReadEntity:
    """The Location entity Backstage generates for a registered location (`locationSpecToLocationEntity`), named
    `generated-<sha1 of type:target>`. It is emitted before what the target holds, so it is stored, listed and the
    root of every ancestry under that location; `location_key` is the resolved target it reads."""
    key = f"{type}:{target}"
    document = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Location",
        "metadata": {
            "name": f"generated-{hashlib.sha1(key.encode()).hexdigest()}",
            "namespace": "default",
            "annotations": {LOCATION_ANNOTATION: key, ORIGIN_LOCATION_ANNOTATION: key},
        },
        "spec": {"type": type, "target": target},
    }
    return ReadEntity(document, location_key=location_key, location=key)


@dataclass(frozen=True)
class ReadError:
    """A problem with a location, or with one document (`document_index`, 0-based in its file) of it."""

    location: str
    message: str
    document_index: int | None = None


@dataclass(frozen=True)
class ReadResult:
    """What one read found: entities in reading order, and the problems met."""

    entities: list[ReadEntity]
    errors: list[ReadError]


class _FileError(Exception):
    """A file or URL that cannot be read, or is too large to."""


class _EntityError(Exception):
    """A document that cannot become an entity; the others of its file still can."""


_Found = Iterator[ReadEntity | ReadError]


@dataclass
class _Run:
    """One read: where it started, where it may read, and the files and URLs already read."""

    origin: str
    max_depth: int
    roots: tuple[Path, ...] | None
    fetch_url: Callable[[str], bytes] | None = None
    seen: set[Path | str] = field(default_factory=set)

    def allows(self, path: Path) -> bool:
        if self.roots is None:
            return True
        real = path.resolve()
        return any(real == root or root in real.parents for root in self.roots)

    def read(self, path: Path) -> bytes:
        if not self.allows(path):
            raise _FileError(f"{path} is outside the directories locations may read")
        return _read_limited(path)

    def fetch(self, url: str) -> bytes:
        assert self.fetch_url is not None
        try:
            return self.fetch_url(url)
        except FetchError as exc:
            raise _FileError(str(exc)) from exc


def read_location(
    type: str,
    target: str,
    *,
    base_dir: Path | None = None,
    max_depth: int = 20,
    allowed_roots: Iterable[Path] | None = None,
    fetch_url: Callable[[str], bytes] | None = None,
) -> ReadResult:
    """Every entity reachable from a location, following Location entities, and every problem met on the way."""
    entities, errors = [], []
    found = iter_location(
        type, target, base_dir=base_dir, max_depth=max_depth, allowed_roots=allowed_roots, fetch_url=fetch_url
    )
    for item in found:
        (entities if isinstance(item, ReadEntity) else errors).append(item)
    return ReadResult(entities, errors)


def iter_location(
    type: str,
    target: str,
    *,
    base_dir: Path | None = None,
    max_depth: int = 20,
    allowed_roots: Iterable[Path] | None = None,
    fetch_url: Callable[[str], bytes] | None = None,
) -> _Found:
    """`read_location` one entity or problem at a time, reading files only as far as the caller consumes: a
    large location is ingested in batches without holding every document in memory."""
    base = (base_dir or Path.cwd()).absolute()
    roots = None if allowed_roots is None else tuple(Path(root).resolve() for root in allowed_roots)
    origin = f"{type}:{_resolved(type, target, base)}"
    run = _Run(origin=origin, max_depth=max_depth, roots=roots, fetch_url=fetch_url)
    yield from _read_target(run, type, target, base=base, depth=0, optional=False)


def _resolved(type: str, target: str, base: Base) -> str:
    if isinstance(base, str):
        return urljoin(base, target)
    if type != "file":
        return target
    return os.path.normpath(os.path.join(base, target))


def _read_target(run: _Run, type: str, target: str, *, base: Base, depth: int, optional: bool) -> _Found:
    pattern = _resolved(type, target, base)
    location = f"{type}:{pattern}"
    if type == "file" and isinstance(base, str):
        yield ReadError(location, f"a document read from {base} may not name file targets")
    elif type != "file" and (type != "url" or run.fetch_url is None):
        yield ReadError(location, f"location type {type} is not supported yet")
    elif depth > run.max_depth:
        yield ReadError(location, f"Location entities are nested deeper than {run.max_depth} levels")
    elif type == "url":
        yield from _read_url(run, pattern, depth, optional)
    elif target.endswith(("/", os.sep)):
        yield ReadError(location, f"cannot read file location {target}: it ends with a path separator")
    else:
        yield from _read_files(run, pattern, depth=depth, optional=optional)


def _read_files(run: _Run, pattern: str, *, depth: int, optional: bool) -> _Found:
    root, glob = _split_glob(pattern)
    # Checked before looking: outside the roots, even whether a file exists is not the reader's to tell.
    if not run.allows(root):
        yield ReadError(f"file:{pattern}", f"file {pattern} is outside the directories locations may read")
        return
    paths = _matching(root, glob)
    if not paths and not optional:
        yield ReadError(f"file:{pattern}", f"file {pattern} does not exist")
    for path in paths:
        yield from _read_file(run, path, depth)


def _matching(root: Path, glob: str | None) -> list[Path]:
    if glob is None:
        return [root] if root.exists() else []
    return sorted(path for path in root.glob(glob) if path.is_file())


def _split_glob(pattern: str) -> tuple[Path, str | None]:
    """The part of a path before its first glob character, and the glob after it (None if there is none)."""
    parts = Path(pattern).parts
    first_glob = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), None)
    if first_glob is None:
        return Path(pattern), None
    return Path(*parts[:first_glob]), str(Path(*parts[first_glob:]))


def _read_file(run: _Run, path: Path, depth: int) -> _Found:
    # Each file is read once per run: that ends cycles of Location entities and keeps one location per entity.
    identity = path.resolve()
    if identity in run.seen:
        return
    run.seen.add(identity)
    location = f"file:{path}"
    try:
        data = run.read(path)
    except _FileError as exc:
        yield ReadError(location, f"file {exc}")
        return
    for index, document in iter_yaml_documents(data):
        yield from _take_document(
            run, document, location, path.parent, lambda ref: run.read(path.parent / ref), index, depth
        )


def _read_url(run: _Run, url: str, depth: int, optional: bool) -> _Found:
    if url in run.seen:
        return
    run.seen.add(url)
    location = f"url:{url}"
    try:
        data = run.fetch(url)
    except _FileError as exc:
        cause = exc.__cause__
        if not (optional and isinstance(cause, FetchError) and cause.not_found):
            yield ReadError(location, str(exc))
        return
    for index, document in iter_yaml_documents(data):
        yield from _take_document(run, document, location, url, lambda ref: run.fetch(urljoin(url, ref)), index, depth)


def _read_limited(path: Path) -> bytes:
    try:
        # Only regular files: reading a FIFO or a device could block or never end.
        if path.exists() and not path.is_file():
            raise _FileError(f"{path} is not a regular file")
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _FileError(f"{path} could not be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise _FileError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _take_document(
    run: _Run, document: Any, location: str, base: Base, read_relative: _ReadRelative, index: int, depth: int
) -> _Found:
    if isinstance(document, YamlError):
        yield ReadError(location, f"YAML error at {location}, {document}", index)
        return
    if not isinstance(document, dict):
        yield ReadError(location, f"Expected object at root, got {_JSON_TYPES.get(type(document), 'object')}", index)
        return
    try:
        entity = _annotated(_resolve_placeholders(document, read_relative), location, run.origin)
    except _EntityError as exc:
        yield ReadError(location, str(exc), index)
        return
    yield ReadEntity(entity, location_key=location, location=location)
    if _is_location(entity):
        yield from _follow(run, entity, location.partition(":")[0], base, depth)


def _annotated(entity: dict[str, Any], location: str, origin: str) -> dict[str, Any]:
    metadata = entity.get("metadata")
    if not isinstance(metadata, dict):
        raise _EntityError("metadata must be an object")
    annotations = metadata.get("annotations")
    if annotations is None:
        annotations = {}
    if not isinstance(annotations, dict):
        raise _EntityError("metadata.annotations must be a valid object")
    annotations = {**annotations, ORIGIN_LOCATION_ANNOTATION: origin, LOCATION_ANNOTATION: location}
    return {**entity, "metadata": {**metadata, "annotations": annotations}}


def _is_location(entity: dict[str, Any]) -> bool:
    kind = entity.get("kind")
    return isinstance(kind, str) and kind.lower() == "location"


def _follow(run: _Run, entity: dict[str, Any], reading_type: str, base: Base, depth: int) -> _Found:
    spec = entity.get("spec")
    if not isinstance(spec, dict):
        return
    # As in Backstage, a Location without a type has the type of the location that read it.
    type = spec.get("type") or reading_type
    optional = spec.get("presence") == "optional"
    for target in _targets(spec):
        yield from _read_target(run, str(type), target, base=base, depth=depth + 1, optional=optional)


def _targets(spec: dict[str, Any]) -> list[str]:
    targets = spec.get("targets")
    every = [spec.get("target"), *(targets if isinstance(targets, list) else [])]
    return [target for target in every if isinstance(target, str) and target]


def _resolve_placeholders(value: Any, read: _ReadRelative) -> Any:
    if isinstance(value, list):
        return [_resolve_placeholders(item, read) for item in value]
    if not isinstance(value, dict):
        return value
    if not any(isinstance(key, str) and key.startswith("$") for key in value):
        return {key: _resolve_placeholders(item, read) for key, item in value.items()}
    if is_placeholder(value):
        ((key, ref),) = value.items()
        if isinstance(ref, str) and not _URL.match(ref):
            return _RESOLVERS[key](key, ref, read)
    # As in Backstage, other `$` keys (a JSON Schema's `$ref`, unknown resolvers) are data, left as they are.
    return value


def _text(key: str, ref: str, read: _ReadRelative) -> str:
    try:
        return read(ref).decode("utf-8", "replace")
    except _FileError as exc:
        raise _EntityError(f"Placeholder {key} could not read location {ref}, {exc}") from exc


def _json(key: str, ref: str, read: _ReadRelative) -> Any:
    try:
        return json.loads(_text(key, ref, read))
    except (ValueError, RecursionError) as exc:
        raise _EntityError(f"Placeholder {key} failed to parse JSON data at {ref}, {exc}") from exc


def _yaml(key: str, ref: str, read: _ReadRelative) -> Any:
    try:
        documents = load_yaml_documents(_text(key, ref, read))
    except YamlError as exc:
        raise _EntityError(f"Placeholder {key} failed to parse YAML data at {ref}, {exc}") from exc
    if len(documents) != 1:
        message = f"expected to find exactly one document of data at {ref}, found {len(documents)}"
        raise _EntityError(f"Placeholder {key} {message}")
    return documents[0]


_RESOLVERS = {"$text": _text, "$json": _json, "$yaml": _yaml}
