"""Files of an entity's source for file rules: read from `file:` locations under configured roots.

This is the `FileSource` seam: once the plugin-proxy serves repository files, a source that asks it takes
this one's place for `url:` locations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.scorecard.rules import Unreadable

SOURCE_ANNOTATIONS = ("backstage.io/source-location", "backstage.io/managed-by-location")
MAX_FILE_BYTES = 1024 * 1024


class LocalFiles:
    """Reads `<location directory>/<path>` for entities whose source is a `file:` location inside `roots`."""

    def __init__(self, roots: tuple[Path, ...], max_bytes: int = MAX_FILE_BYTES) -> None:
        self.roots = tuple(root.resolve() for root in roots)
        self.max_bytes = max_bytes

    def read(self, entity: dict[str, Any], path: str) -> bytes | Unreadable:
        base = self._base(entity)
        if isinstance(base, Unreadable):
            return base
        target = (base / path).resolve()
        if not any(target.is_relative_to(root) for root in self.roots):
            return Unreadable(f"{path} is outside the allowed file roots")
        try:
            size = target.stat().st_size
            if not target.is_file():
                return Unreadable(f"{path} is not a file")
            if size > self.max_bytes:
                return Unreadable(f"{path} is larger than {self.max_bytes} bytes")
            return target.read_bytes()
        except FileNotFoundError:
            return Unreadable(f"{path} not found", missing=True)
        except OSError as exc:
            return Unreadable(f"{path} cannot be read: {exc.strerror}")

    def _base(self, entity: dict[str, Any]) -> Path | Unreadable:
        annotations = (entity.get("metadata") or {}).get("annotations") or {}
        for name in SOURCE_ANNOTATIONS:
            location = annotations.get(name)
            if not isinstance(location, str):
                continue
            kind, _, target = location.partition(":")
            if kind != "file":
                return Unreadable(f"{kind} locations are not readable yet (the plugin-proxy will serve them)")
            target_path = Path(target)
            # source-location names a directory; managed-by-location names the catalog file itself.
            return target_path if name == SOURCE_ANNOTATIONS[0] or target.endswith("/") else target_path.parent
        return Unreadable("the entity has no source location")
