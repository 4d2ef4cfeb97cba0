"""Bounded reading and parsing of every file the sidecar reads (config, scenario, manifests,
latch state).

A file is size-limited *before* it is parsed, must be a regular file (a FIFO or a device never
blocks a read) and strict UTF-8. YAML is parsed with a :class:`yaml.SafeLoader` subclass that
bounds nesting depth, alias uses and the *expanded* size of the document (an alias bomb of a
few hundred bytes expands to billions of nodes when it is compared, copied or logged).
Every problem is an :class:`UnsafeDocumentError` with a short message naming the file.
"""

from __future__ import annotations

import functools
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

from sidecar.core.errors import SidecarError

# Defaults, documented in docs/config.md ("Input limits").
MAX_CONFIG_BYTES = 1 << 20
MAX_SCENARIO_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20
MAX_STATE_BYTES = 4 << 20
MAX_DEPTH = 64  # nesting of mappings / sequences
MAX_ALIASES = 100  # alias uses (``*name``) in one document
MAX_NODES = 100_000  # nodes once every alias is expanded
MAX_MESSAGE_CHARS = 300  # an error message quotes at most this much


class UnsafeDocumentError(SidecarError, ValueError):
    """A file that is too large, not a regular file, not UTF-8, or a YAML document beyond the
    nesting / alias / size bounds. The message is short and names the file."""


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with a marker saying how much was cut)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more chars)"


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40


def short_repr(value: Any, limit: int = 120) -> str:
    """A bounded ``repr`` for logs and error messages: a few levels and items, never the
    whole value (an expanded alias bomb would be gigabytes)."""
    return clip(_REPR.repr(value), limit)


class NotRegularFileError(UnsafeDocumentError):
    """The path is a directory, FIFO, device or socket: never read."""


class TooLargeError(UnsafeDocumentError):
    """The file is larger than its limit: never parsed."""


def read_bounded_bytes(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    Raises ``OSError`` when the file cannot be opened (``FileNotFoundError`` when it is
    missing), :class:`NotRegularFileError` or :class:`TooLargeError`. Never blocks on a FIFO
    and never reads more than ``max_bytes + 1`` bytes.
    """
    where = os.fspath(path)
    fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{where}: not a regular file")
        if st.st_size > max_bytes:
            raise TooLargeError(f"{where}: {st.st_size} bytes, larger than the limit of {max_bytes}")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # grew while being read
        raise TooLargeError(f"{where}: larger than the limit of {max_bytes} bytes")
    return data


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes (see
    :func:`read_bounded_bytes`); :class:`UnsafeDocumentError` when it is not UTF-8."""
    data = read_bounded_bytes(path, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeDocumentError(
            f"{os.fspath(path)}: not UTF-8 (invalid byte at offset {exc.start})"
        ) from None


@functools.cache
def _loader_class() -> type[Any]:
    """The bounded SafeLoader subclass (built on first use: ``probe`` never imports yaml)."""
    import yaml
    from yaml.events import AliasEvent
    from yaml.nodes import MappingNode, Node, SequenceNode

    class BoundedError(yaml.YAMLError):
        pass

    class BoundedSafeLoader(yaml.SafeLoader):
        """A SafeLoader whose composer counts nesting depth, alias uses and expanded nodes."""

        max_depth = MAX_DEPTH
        max_aliases = MAX_ALIASES
        max_nodes = MAX_NODES
        bounded_error = BoundedError

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0
            self._aliases = 0
            # id(node) -> (node, expanded size); the node is kept so its id stays unique
            self._sizes: dict[int, tuple[Node, int]] = {}

        def compose_node(self, parent: Node | None, index: Any) -> Node:
            self._depth += 1
            try:
                if self._depth > self.max_depth:
                    raise BoundedError(f"nested deeper than {self.max_depth} levels")
                alias = self.check_event(AliasEvent)
                composed = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            if composed is None:
                raise BoundedError("empty node")
            node: Node = composed
            if alias:
                self._aliases += 1
                if self._aliases > self.max_aliases:
                    raise BoundedError(f"more than {self.max_aliases} aliases")
                if id(node) not in self._sizes:
                    raise BoundedError("an alias refers to a node that contains it")
                return node
            size = 1
            if isinstance(node, SequenceNode):
                size += sum(self._size(child) for child in node.value)
            elif isinstance(node, MappingNode):
                size += sum(self._size(k) + self._size(v) for k, v in node.value)
            if size > self.max_nodes:
                raise BoundedError(f"expands to more than {self.max_nodes} nodes")
            self._sizes[id(node)] = (node, size)
            return node

        def _size(self, node: Node) -> int:
            known = self._sizes.get(id(node))
            return 1 if known is None else known[1]

    return BoundedSafeLoader


def load_yaml_bounded(
    text: str,
    where: str,
    *,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = MAX_ALIASES,
    max_nodes: int = MAX_NODES,
) -> Any:
    """Parse one YAML document safely within the bounds. Raises :class:`UnsafeDocumentError`
    naming ``where`` (a file name) for invalid YAML or a document beyond a bound."""
    import yaml

    cls = _loader_class()
    loader = cls(text)
    loader.max_depth = max_depth
    loader.max_aliases = max_aliases
    loader.max_nodes = max_nodes
    try:
        return loader.get_single_data()
    except cls.bounded_error as exc:
        raise UnsafeDocumentError(f"{where}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise UnsafeDocumentError(clip(f"{where}: not valid YAML: {exc}")) from None
    except RecursionError:  # a bound above the interpreter's own limit
        raise UnsafeDocumentError(f"{where}: refused: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, max_bytes: int) -> Any:
    """:func:`read_bounded` then :func:`load_yaml_bounded`."""
    return load_yaml_bounded(read_bounded(path, max_bytes), os.fspath(path))
