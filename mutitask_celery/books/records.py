"""A dead-letter record: its fields declared once, and how each is read, shown and stored.

:class:`FailedTask` is the record. Each of its fields says how its hash field reads
(:class:`Kind`), whether records written before it existed lack it, and where it shows
(a :class:`Column` of ``mutitask failed list``, a row or a block of the web page). The same
list drives the writing: :func:`lua_constants` hands the stored fields' names, in order, to
``lua/dead_letter.lua``, whose writer stores exactly those, in that order (a declared field
it has no value for stops every step that may write a record, before it writes anything,
with an error naming the field; the test suite writes records). This module
knows no store and no Redis, so the store, the Lua loader, the CLI and the web page can all
read it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar

from mutitask_celery import codec
from mutitask_celery.connection import text
from mutitask_celery.tables import local_time

log = logging.getLogger(__name__)

RECORD_VERSION = 1  # written as the hash's ``v``; a reader skips records of a newer version
# Bytes of an indexed field's value the field index keeps (cut at a character's start): enough
# to tell exception types and device names apart, small enough that the index stays a fraction
# of the records it indexes (a reason may run to kilobytes).
INDEX_CUT = 64


class Kind(str, Enum):
    """How a record field reads from its hash, leaves :meth:`FailedTask.as_dict` and shows.

    The value is the word the web page's script knows it by (``mt.field`` in
    ``static/common.js``), so a new field of a known kind shows without touching the script.
    """

    WORD = "word"  # a short text (an id, a device's name): shown whole
    TEXT = "text"  # a text that may be long (a reason, a traceback): cut where shown
    INT = "int"
    TIME = "time"  # Unix seconds in Redis's clock
    VALUE = "value"  # a task's data or result as the codec wrote it (a frame, for a big task)

    def read(self, raw: str | bytes) -> Any:
        """The value from a hash field that a raw client read (see :func:`hash_fields`)."""
        if self is Kind.VALUE:
            return codec.decode(raw)
        value = text(raw)
        if self is Kind.INT:
            return int(value)
        if self is Kind.TIME:
            return float(value)
        return value

    @property
    def long(self) -> bool:
        """Cut where it is shown, with its whole size beside it: one field may be megabytes."""
        return self in (Kind.TEXT, Kind.VALUE)


@dataclass(frozen=True)
class Column:
    """A field's column in ``mutitask failed list``: its header, its place from the left (the
    table keeps short fields first and long texts last, not the record's order), and the
    characters it shows of a long text."""

    header: str
    place: int
    width: int | None = None


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a record whose hash lacks this field is unreadable


@dataclass(frozen=True)
class Field:
    """One field of a dead-letter record, declared once on :class:`FailedTask`; the store's
    decoder, :meth:`FailedTask.as_dict`, the web page and ``mutitask failed`` all read it.

    ``absent`` is the value when the hash lacks the field or holds it empty (records written
    before the field existed), or :data:`REQUIRED`. ``label`` is its name on the web page
    (None: not shown there); ``listed``: a column of the page's lists; ``block``: a block of
    its own in a record's view rather than a row (a text that runs to many lines);
    ``indexed``: the Lua writer also files the record under this field's value (its first
    :data:`INDEX_CUT` bytes) in the store's field index, which the filters read
    (:mod:`.dead_filter`): a field filtered on that has no index is checked record by record.
    """

    name: str
    kind: Kind
    absent: Any = REQUIRED
    column: Column | None = None
    label: str | None = None
    listed: bool = False
    block: bool = False
    indexed: bool = False

    def read(self, raw: Mapping[str, str | bytes]) -> Any:
        """This field of a record's hash; raises ``KeyError`` when it is required and missing,
        ``ValueError`` or ``TypeError`` when it cannot be read."""
        value = raw.get(self.name)
        if self.absent is REQUIRED:
            if value is None:
                raise KeyError(self.name)
        elif not value:
            return self.absent
        return self.kind.read(value)

    def export(self, value: Any) -> Any:
        """The value as :meth:`FailedTask.as_dict` gives it: a task's data or result as its
        text (:func:`.codec.to_text`), a result that is absent as None."""
        if self.kind is not Kind.VALUE or (value is None and self.absent is None):
            return value
        return codec.to_text(value)

    def cell(self, exported: Any) -> str:
        """The value (as :meth:`export` gave it) in its column of ``mutitask failed list``."""
        if self.kind is Kind.TIME:
            return local_time(exported)
        cell = str(exported)
        width = self.column.width if self.column else None
        if width is None or len(cell) <= width:
            return cell
        return cell[:width] + ("..." if self.kind is Kind.VALUE else "")  # else its start reads as a whole value


def _record(kind: Kind, absent: Any = REQUIRED, **shown: Any) -> dict[str, Any]:
    """A :class:`FailedTask` field's metadata: how it is stored and shown (see :class:`Field`)."""
    return {"record": {"kind": kind, "absent": absent, **shown}}


@dataclass(frozen=True)
class FailedTask:
    """One dead-letter record.

    Each field is declared once, here, with how its hash field reads and where it shows
    (:class:`Field`); :data:`FIELDS` collects them in this order, which is the order of
    :meth:`as_dict`, the web page's lists and ``mutitask failed show``. A new field is a line
    here (with ``absent``: records written before it lack it) and its value in
    ``lua/dead_letter.lua``'s ``record_values``; the writer stores the fields listed here,
    in this order (:func:`lua_constants`); the pages lay it out by ``label``, ``listed`` and
    ``block`` and show it by its :class:`Kind`. The hash also holds ``v``
    (:data:`RECORD_VERSION`) and ``claim`` (read only by the Lua steps: see ``lua/claim.lua``).
    """

    id: str = field(metadata=_record(Kind.WORD, column=Column("ID", 1)))
    channel: int = field(metadata=_record(Kind.INT, column=Column("CH", 2), label="Channel", listed=True))
    data: Any = field(  # the task exactly as the generator yielded it
        metadata=_record(Kind.VALUE, column=Column("TASK", 7, 40), label="Task", listed=True, block=True)
    )
    reason: str = field(
        metadata=_record(Kind.TEXT, "", column=Column("REASON", 6, 40), label="Reason", listed=True, indexed=True)
    )
    traceback: str = field(metadata=_record(Kind.TEXT, "", label="Traceback", block=True))
    device: str = field(
        metadata=_record(Kind.WORD, "", column=Column("DEVICE", 5), label="Device", listed=True, indexed=True)
    )
    first_failed: float = field(metadata=_record(Kind.TIME, 0.0, label="First failed"))
    last_failed: float = field(
        metadata=_record(Kind.TIME, 0.0, column=Column("LAST FAILED", 4), label="Last failed", listed=True)
    )
    failures: int = field(metadata=_record(Kind.INT, 1, column=Column("FAILS", 3), label="Failures", listed=True))
    result: Any = field(  # kept when the save function failed
        default=None, metadata=_record(Kind.VALUE, None, label="Result kept", block=True)
    )

    FIELDS: ClassVar[tuple[Field, ...]]

    @classmethod
    def from_hash(cls, raw: Mapping[str, str | bytes]) -> FailedTask:
        """A record from its hash's fields (text, but a task's data may be a frame: see
        :func:`hash_fields`); raises ``KeyError``, ``ValueError`` or ``TypeError`` when it cannot
        be read."""
        return cls(**{f.name: f.read(raw) for f in cls.FIELDS})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (task data and result as their JSON text values)."""
        return {f.name: f.export(getattr(self, f.name)) for f in self.FIELDS}


FailedTask.FIELDS = tuple(Field(name=f.name, **f.metadata["record"]) for f in fields(FailedTask))
_FRAMES = {f.name.encode() for f in FailedTask.FIELDS if f.kind is Kind.VALUE}  # fields that may hold a frame
_COLUMNS = sorted(((f.column, f) for f in FailedTask.FIELDS if f.column is not None), key=lambda c: c[0].place)


def table_rows(records: Sequence[FailedTask]) -> list[tuple[str, ...]]:
    """Rows of ``mutitask failed list``, the header first: the fields with a :class:`Column`."""
    rows = [tuple(column.header for column, _ in _COLUMNS)]
    for record in records:
        exported = record.as_dict()
        rows.append(tuple(f.cell(exported[f.name]) for _, f in _COLUMNS))
    return rows


def hash_fields(raw: dict[bytes, bytes]) -> dict[str, str | bytes]:
    """A record's fields as Redis gave them to a raw client: text, but a task's data that is a
    frame stays ``bytes`` (see :func:`.codec.encode_binary`)."""
    return {k.decode(): v if k in _FRAMES and codec.is_frame(v) else v.decode(errors="replace") for k, v in raw.items()}


def decode_record(raw: Mapping[str, str | bytes]) -> FailedTask | None:
    """A record from its Redis hash, or None (with a warning) when it cannot be read: written
    by a newer version, or a field unreadable. Its fields are text, but a task's data may be
    a frame (see :func:`hash_fields`)."""
    name = text(raw.get("id", "?"))
    try:
        version = int(text(raw.get("v", "0")))
        if version > RECORD_VERSION:
            log.warning("skipping dead-letter record %s: written by a newer version (v%s)", name, version)
            return None
        return FailedTask.from_hash(raw)
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("skipping unreadable dead-letter record %s: %s", name, exc)
        return None


INDEXED = tuple(f.name for f in FailedTask.FIELDS if f.indexed)  # the fields the field index files records under


def index_cut(value: bytes) -> bytes:
    """The first :data:`INDEX_CUT` bytes of ``value``, cut where a character starts: what the
    field index keeps of a value (``index_cut`` in ``lua/dead_index.lua`` cuts alike)."""
    if len(value) <= INDEX_CUT:
        return value
    n = INDEX_CUT
    while n > 0 and 0x80 <= value[n] < 0xC0:  # a UTF-8 continuation byte: not a character's start
        n -= 1
    return value[:n]


def index_range(name: str, value: str, whole: bool) -> tuple[bytes, bytes]:
    """``ZRANGEBYLEX`` bounds of the field index's entries (``<field>\\0<value cut>\\0<id>``) for
    field ``name``: those whose value is ``value`` (``whole``), or starts with it. A value cut in
    the index gives the entries of every value that starts as it does: the caller checks each
    record's whole value (the index names candidates; it never decides alone)."""
    raw = value.encode()
    cut = index_cut(raw)
    head = name.encode() + b"\0" + cut + (b"\0" if whole and cut == raw else b"")
    return b"[" + head, b"(" + head + b"\xff"  # no byte of UTF-8 text or of an id is 0xff


def lua_constants() -> str:
    """Lua lines that declare the record's version, its stored fields' names in order, the
    fields the field index files records under and how many bytes of a value it keeps, for
    ``lua/dead_index.lua`` (pasted where it says ``--! record``; ``lua/dead_letter.lua``, the
    writer, includes it)."""
    names = ", ".join(f"'{f.name}'" for f in FailedTask.FIELDS)
    indexed = ", ".join(f"'{name}'" for name in INDEXED)
    return (
        f"local RECORD_VERSION = '{RECORD_VERSION}'\nlocal RECORD_FIELDS = {{{names}}}\n"
        f"local INDEXED_FIELDS = {{{indexed}}}\nlocal INDEX_CUT = {INDEX_CUT}"
    )
