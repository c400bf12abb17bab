"""The one way loraserve reads its input files and writes its output files.

Every reader (config, ``adapters_csv``, plan, migration, inventory, profile, trace) goes
through :func:`read_bytes` / :func:`read_text` / :func:`read_yaml`, so each input is held to
the same rules: a size budget, UTF-8 with a one-line error naming the file, YAML through
libyaml when it is installed, no duplicate keys, a budget on what aliases may expand to, no
``.nan`` or ``.inf`` anywhere. Every writer goes through :func:`write_atomic` and the CLI
checks its targets with :func:`check_outputs` before any work starts, so a command never
writes over one of its own inputs, never fails on a bad target after a long solve, and
never leaves half a file (or a stray temporary) behind.

Every problem is raised as :class:`ConfigError`, whose message is one line.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

#: Largest input file read, in bytes. The biggest realistic input, a config of tens of
#: thousands of adapters, is a few MB; this leaves room for a million while keeping a
#: mistaken path (a log, a disk image) from exhausting memory.
MAX_INPUT_BYTES = 256 * 1024**2
#: YAML nodes that aliases may add beyond the document's own: generous for anchors reused
#: across thousands of adapters, and what stops an alias bomb before anything expands it.
MAX_ALIAS_EXPANSION = 1_000_000
#: Deepest nesting of YAML collections accepted; loraserve's files nest five deep at most.
MAX_DEPTH = 64
#: Longest value echoed in an error message.
MAX_ECHO = 60
#: Longest error line printed; a message that quotes an input is cut here.
MAX_ERROR_LINE = 500

# libyaml's parser when present: a 50 MB file parses in seconds instead of minutes.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A problem with an input, described in one line that names the field and the fix."""


# ---- what a command read, so that it never writes over it ------------------------------------

_inputs: ContextVar[set[Path] | None] = ContextVar("loraserve_inputs", default=None)
_written: ContextVar[list[Path] | None] = ContextVar("loraserve_written", default=None)


@contextlib.contextmanager
def tracking_inputs() -> Iterator[set[Path]]:
    """Record every file read inside the block; :func:`check_outputs` refuses to write them.

    Yields
    ------
    set of Path
        The resolved paths read so far (filled as the block runs).
    """
    seen: set[Path] = set()
    token = _inputs.set(seen)
    try:
        yield seen
    finally:
        _inputs.reset(token)


@contextlib.contextmanager
def tracking_writes() -> Iterator[list[Path]]:
    """Record every file :func:`write_atomic` completes inside the block, in order.

    Yields
    ------
    list of Path
        The paths written so far, so that an interrupted command can say what it wrote.
    """
    written: list[Path] = []
    token = _written.set(written)
    try:
        yield written
    finally:
        _written.reset(token)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as given
        return path.absolute()


# ---- reading ---------------------------------------------------------------------------------


def one_line(message: object) -> str:
    """``message`` as one line of at most :data:`MAX_ERROR_LINE` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_ERROR_LINE else text[: MAX_ERROR_LINE - 3] + "..."


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters so that an error stays one short line."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_bytes(path: str | Path, what: str = "the file") -> bytes:
    """The bytes of ``path``, within :data:`MAX_INPUT_BYTES`.

    Parameters
    ----------
    path : str or Path
    what : str
        What the caller expects there (``"the config YAML file"``), for the message when
        ``path`` is a folder.

    Raises
    ------
    ConfigError
        Missing, a folder, unreadable, or over the size budget.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_INPUT_BYTES:
                raise ConfigError(f"{path}: {size / 1024**2:.0f} MiB is more than the "
                                  f"{MAX_INPUT_BYTES // 1024**2} MiB an input may have; "
                                  "check the path")
            # One byte past the budget tells a growing file (or a pipe) from a large one.
            data = handle.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give {what}") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; make it readable") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_INPUT_BYTES:
        raise ConfigError(f"{path}: more than the {MAX_INPUT_BYTES // 1024**2} MiB an input "
                          "may have; check the path")
    seen = _inputs.get()
    if seen is not None:
        seen.add(_resolved(path))
    return data


def decode_text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark is dropped).

    Raises
    ------
    ConfigError
        One line saying what the bytes are instead and how to fix it.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{source}: is UTF-16 text; save it as UTF-8")
    if b"\x00" in data[:8192]:
        raise ConfigError(f"{source}: is a binary file, not text; give the text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{source}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; "
                          "save the file as UTF-8") from None


def read_text(path: str | Path, what: str = "the file") -> str:
    """The UTF-8 text of ``path`` (see :func:`read_bytes` and :func:`decode_text`)."""
    return decode_text(read_bytes(path, what), str(path))


def _where(path: tuple[str | int, ...]) -> str:
    parts: list[str] = []
    for item in path:
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + item)
    return "".join(parts)


def _at(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _Builder:
    """Python values from a composed YAML node graph, with loraserve's rules.

    PyYAML's own constructor accepts duplicate keys (the last wins), ``.nan`` and ``.inf``,
    and builds an alias bomb's nested lists as shared objects that anything walking them
    (validation, an error message) expands to billions of items. This builder measures what
    the aliases expand to first, in time linear in the document, and then builds the values
    with the path of each one at hand for the message.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.scalars = yaml.constructor.SafeConstructor()
        self.built: dict[int, Any] = {}

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {message}")

    def check_size(self, root: yaml.Node) -> None:
        """Reject documents whose aliases expand past :data:`MAX_ALIAS_EXPANSION` nodes."""
        expanded: dict[int, int] = {}
        open_nodes: set[int] = set()
        visited = [0]  # nodes walked once each: the document's own size

        def size(node: yaml.Node, depth: int) -> int:
            visited[0] += 1
            if isinstance(node, yaml.ScalarNode):
                return 1
            key = id(node)
            if key in expanded:
                return expanded[key]
            if key in open_nodes:
                raise self.fail(f"{_at(node)}: an alias refers to a collection that contains "
                                "it; write the value out")
            if depth > MAX_DEPTH:
                raise self.fail(f"{_at(node)}: nested deeper than {MAX_DEPTH} levels")
            open_nodes.add(key)
            total = 1
            if isinstance(node, yaml.SequenceNode):
                total += sum(size(child, depth + 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
            open_nodes.discard(key)
            expanded[key] = total
            if total > visited[0] + MAX_ALIAS_EXPANSION:
                raise self.fail(f"{_at(node)}: YAML aliases expand to more than "
                                f"{MAX_ALIAS_EXPANSION:,} values; write the repeated parts "
                                "out instead of nesting aliases")
            return total

        size(root, 0)

    def build(self, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        # Collections are built once and shared, as an alias means; scalars are cheap to
        # build again and not worth a memo entry each in a large file.
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        key = id(node)
        if key in self.built:
            return self.built[key]
        if isinstance(node, yaml.SequenceNode):
            if node.tag not in ("tag:yaml.org,2002:seq",):
                raise self.fail(f"{_where(path) or 'document'}: YAML tag {clip(node.tag)} is "
                                "not supported")
            items: list[Any] = []
            self.built[key] = items
            items.extend(self.build(child, (*path, i)) for i, child in enumerate(node.value))
            return items
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        raise self.fail(f"{_at(node)}: unexpected YAML node")  # pragma: no cover

    def scalar(self, node: yaml.ScalarNode, path: tuple[str | int, ...]) -> Any:
        if node.tag == "tag:yaml.org,2002:str":
            return node.value  # most scalars (ids, names): no constructor call needed
        constructor = self.scalars.yaml_constructors.get(node.tag)
        if constructor is None or node.tag == "tag:yaml.org,2002:binary":
            raise self.fail(f"{_where(path) or _at(node)}: YAML tag {clip(node.tag)} is not "
                            "supported; give a plain value")
        try:
            value = constructor(self.scalars, node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            raise self.fail(f"{_where(path) or _at(node)}: {clip(node.value)} is not a valid "
                            f"{node.tag.rsplit(':', 1)[-1]}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"{_where(path) or _at(node)}: {node.value} is not a finite "
                            "number; give a number")
        return value

    def mapping(self, node: yaml.MappingNode, path: tuple[str | int, ...]) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        self.built[id(node)] = result
        explicit: set[Any] = set()
        # Merge keys (``<<: *defaults``) first, so that the mapping's own keys override them;
        # a key given twice in the mapping itself is a mistake, not an override.
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                for merged in self._merged(value_node, path):
                    for merged_key, merged_value in merged.items():
                        result.setdefault(merged_key, merged_value)
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.build(key_node, path)
            if isinstance(key, (list, dict)):
                raise self.fail(f"{_where(path) or _at(key_node)}: a mapping key must be a "
                                "plain value")
            if key in explicit:
                where = _where((*path, str(key)))
                raise self.fail(f"{where}: the key {clip(key)} is given twice (at "
                                f"{_at(key_node)}); keep one")
            explicit.add(key)
            result[key] = self.build(value_node, (*path, str(key)))
        return result

    def _merged(self, node: yaml.Node, path: tuple[str | int, ...]) -> list[dict[Any, Any]]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: list[dict[Any, Any]] = []
        for item in nodes:
            value = self.build(item, path)
            if not isinstance(value, dict):
                raise self.fail(f"{_where(path) or _at(item)}: '<<' merges mappings only")
            merged.append(value)
        return merged


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with loraserve's rules (see :class:`_Builder`).

    Parameters
    ----------
    text : str
    source : str
        Name at the start of error messages (usually the file's path).

    Returns
    -------
    object
        The document (``None`` when it is empty).

    Raises
    ------
    ConfigError
        One line: the syntax error and where, a duplicate key, an alias bomb, a non-finite
        number (naming the field), a tag loraserve does not read.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    if root is None:
        return None
    builder = _Builder(source)
    builder.check_size(root)
    return builder.build(root, ())


def read_yaml(path: str | Path, what: str = "the YAML file") -> Any:
    """The parsed YAML of ``path`` (:func:`read_text`, then :func:`parse_yaml`)."""
    return parse_yaml(read_text(path, what), str(path))


# ---- validation messages ---------------------------------------------------------------------


def _location(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in {"function-after", "function-before", "function-plain"} or "[" in item:
            continue
        else:
            parts.append(("." if parts else "") + clip(item, MAX_ECHO).strip("'\""))
    text = "".join(parts)
    if len(loc) >= 2 and loc[0] == "adapters" and isinstance(loc[1], int):
        adapters = raw.get("adapters")
        if isinstance(adapters, list) and loc[1] < len(adapters):
            entry = adapters[loc[1]]
            if isinstance(entry, Mapping) and "id" in entry and loc[2:3] != ("id",):
                text += f" (id {clip(str(entry['id']))})"
    return text


def format_validation_error(error: ValidationError, raw: Mapping[str, Any], source: str) -> str:
    """Render the first validation problem as one line: ``source: field: message``."""
    first = error.errors(include_url=False)[0]
    where = _location(tuple(first["loc"]), raw)
    message = str(first["msg"]).removeprefix("Value error, ").replace("\n", " ")
    if first["type"] == "missing":
        message = "is required"
    elif first["type"] == "extra_forbidden":
        message = "is not a known field; check its spelling against `loraserve schema`"
    elif first["type"] == "finite_number":
        message = f"{clip(first.get('input'))} is not a finite number; give a number"
    elif first["type"] == "literal_error" and where.endswith("rank"):
        message = f"{message} (got {clip(first.get('input'))})"
    elif "input" in first and first["type"] not in {"value_error", "assertion_error"}:
        message = f"{message} (got {clip(first['input'])})"
    return f"{source}: {where}: {message}" if where else f"{source}: {message}"


def parse_model(cls: type[ModelT], text: str, source: str, what: str) -> ModelT:
    """Validate YAML ``text`` into ``cls``; :class:`ConfigError` (one line) when it is not.

    ``what`` describes the expected top level, for the message (``"a plan must be ..."``).
    """
    raw = parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {what}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, source)) from None


def load_model(cls: type[ModelT], path: str | Path, what: str) -> ModelT:
    """Read ``path`` and validate it into ``cls`` (see :func:`parse_model`)."""
    return parse_model(cls, read_text(path), str(path), what)


# ---- writing ---------------------------------------------------------------------------------


def check_outputs(outputs: Mapping[str, str | Path | None],
                  inputs: Mapping[str, str | Path | None] | None = None) -> None:
    """Check, before any work starts, that each output can be written and overwrites no input.

    Parameters
    ----------
    outputs : mapping
        Option name (``"-o"``, ``"--migration"``) to the path it names (``None``: not given).
    inputs : mapping, optional
        Option name to each input the command names; every file read so far inside
        :func:`tracking_inputs` counts as an input too.

    Raises
    ------
    ConfigError
        An output names an input, another output, a folder, or a folder that does not exist.
    """
    named_inputs: dict[Path, str] = {}
    for seen in _inputs.get() or set():
        named_inputs[seen] = f"'{seen.name}'"
    for flag, given in (inputs or {}).items():
        if given is not None:
            named_inputs[_resolved(Path(given))] = flag
    taken: dict[Path, str] = {}
    for flag, given in outputs.items():
        if given is None:
            continue
        path = Path(given)
        resolved = _resolved(path)
        if resolved in named_inputs:
            raise ConfigError(f"{flag} {path}: is an input of this command "
                              f"({named_inputs[resolved]}); write to another file")
        if resolved in taken:
            raise ConfigError(f"{flag} {path}: {taken[resolved]} writes there too; give each "
                              "output its own file")
        taken[resolved] = flag
        check_target(path, flag)


def check_target(path: str | Path, flag: str) -> None:
    """Raise :class:`ConfigError` unless a file can be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"{flag} {path}: the folder '{parent}' {what}; create it first")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: the folder '{parent}' is not writable")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically: the old file, or the new one, never half of it.

    The text goes to a temporary file in the same folder that replaces ``path`` in one
    rename; on any failure (or an interrupt) the temporary file is removed.

    Raises
    ------
    ConfigError
        When the file cannot be written (a folder, a missing folder, no permission, a full
        disk), with the reason.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the folder '{parent}' does not exist; create it "
                          "first") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        # mkstemp makes the file private; an output should read like any other file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        done = _written.get()
        if done is not None:
            done.append(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise
