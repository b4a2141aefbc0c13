"""How task data and results travel: JSON text, with tagged forms for what JSON
lacks (tuples, numpy arrays, bytes, sets, dicts with non-string keys).

The tag makes a value round-trip exactly as the generator yielded it, so a
dead-lettered task reloads as the same task. ``to_text`` gives the legacy form
the original handed to task functions: a ``str`` stays itself, anything else
becomes Python-literal text that ``ast.literal_eval`` reads back (numpy arrays
as nested lists), so a seed script's ``eval(task)`` keeps working.

A numpy array travels as base64 of its memory, as it lies (C or Fortran order;
a view with gaps is copied once into C order)::

    {"__mt__": "ndarray", "dtype": "<f4", "shape": [512, 512], "order": "C", "b64": "..."}

``dtype`` is numpy's ``dtype.str``, byte order included; only bool, integer,
float and complex arrays travel (not long double, whose memory differs between
machines). For a 512x512 uint8 image, nested lists took about 20 ms each way and
3.6 times its bytes; base64 takes about 1 ms and 4/3. The older form with the
values as nested lists (``"v"``, written by 0.1.0 and by 0.2.0 before this form)
still decodes: dead letters and results saved then stay readable. A decoded
array owns its memory and is writable (one copy after the base64 decoding,
0.3 ms for 8 MiB beside 30 ms of decoding).

In the books a big task's data is kept as a binary *frame* instead
(:func:`encode_binary`): the same JSON, each array's memory after it as it lies, with no
base64 to write or read; every reader of the books' data reads it as ``bytes`` and
:func:`decode` tells the two forms apart (:func:`as_text` gives the text of either).

No encoded text is longer than :data:`MAX_TEXT`: what Redis could not hold is
refused here, naming where it is in the value (an array or bytes before their
base64 is built), and the server dead-letters such a task, a device such a result.
"""

from __future__ import annotations

import binascii
import json
import os
from typing import Any

from mutitask_celery.errors import EncodingError

TAG = "__mt__"
_SCALARS = (str, int, float, bool, type(None))

REDIS_MAX_STRING = 512 * 2**20  # the most Redis holds in one string value or command argument
MAX_TEXT = REDIS_MAX_STRING - 64 * 2**20
"""The longest encoded text (448 MiB). A task's text travels as it is inside its message
(see :func:`.books.messages.build`), which travels alone when it is big (see
``ledger.MESSAGE_BYTES``): 64 MiB of a Redis string are left for the rest of the message."""

_ARRAY_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex
_ORDERS = ("C", "F")

try:  # numpy is optional: arrays are supported when it is installed.
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only without numpy
    _np = None  # type: ignore[assignment]


def _pack(value: Any, path: str, buffers: list[Any] | None = None) -> Any:
    """``value`` as JSON-ready data; with ``buffers``, the memory of arrays and bytes is
    appended there (a frame's, see :func:`encode_binary`) instead of written as base64."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [_pack(v, f"{path}[{i}]", buffers) for i, v in enumerate(value)]
    if kind is tuple:
        return {TAG: "tuple", "v": [_pack(v, f"{path}[{i}]", buffers) for i, v in enumerate(value)]}
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: _pack(v, f"{path}[{k!r}]", buffers) for k, v in value.items()}
        return {
            TAG: "dict",
            "v": [[_pack(k, f"{path}.key", buffers), _pack(v, f"{path}[{k!r}]", buffers)] for k, v in value.items()],
        }
    if kind in (bytes, bytearray):
        return _pack_bytes(value, path or "value", buffers)
    if kind in (set, frozenset):
        return {TAG: kind.__name__, "v": [_pack(v, f"{path}.item", buffers) for v in value]}
    if _np is not None:
        if isinstance(value, _np.ndarray):
            return _pack_array(value, path or "value", buffers)
        if isinstance(value, _np.generic):
            plain = value.item()
            if isinstance(plain, _np.generic):  # a long double: no Python number holds it
                raise EncodingError(f"{path or 'value'}: a numpy {value.dtype} cannot travel (convert it to float)")
            return _pack(plain, path)
    raise EncodingError(
        f"{path or 'value'}: a {kind.__module__}.{kind.__qualname__} cannot travel as JSON "
        "(use str, int, float, bool, None, list, tuple, dict, bytes, set or a numpy array)"
    )


def _pack_bytes(value: bytes | bytearray, where: str, buffers: list[Any] | None) -> dict[str, Any]:
    _check_size(len(value), where, type(value).__name__)
    if buffers is not None:
        buffers.append(value)
        return {TAG: "bytes", "buf": len(buffers) - 1}
    return {TAG: "bytes", "v": _Base64(binascii.b2a_base64(value, newline=False).decode("ascii"))}


def _unpack(value: Any, buffers: list[memoryview] | None = None) -> Any:
    """The value :func:`_pack` was given; ``buffers``: a frame's (see :func:`encode_binary`)."""
    kind = type(value)
    if kind is list:
        return [_unpack(v, buffers) for v in value]
    if kind is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: _unpack(v, buffers) for k, v in value.items()}
    if tag == "tuple":
        return tuple(_unpack(v, buffers) for v in value["v"])
    if tag == "dict":
        return {_unpack(k, buffers): _unpack(v, buffers) for k, v in value["v"]}
    if tag == "bytes":
        if "buf" in value:
            return bytes(_buffer(value, buffers))
        return binascii.a2b_base64(value["v"])
    if tag == "set":
        return {_unpack(v, buffers) for v in value["v"]}
    if tag == "frozenset":
        return frozenset(_unpack(v, buffers) for v in value["v"])
    if tag == "ndarray":
        return _unpack_array(value, buffers)
    raise EncodingError(f"unknown tagged value {tag!r} (written by a newer version?)")


def _check_size(nbytes: int, where: str, what: str) -> None:
    """Refuse what would be too long as base64 before building it."""
    size = 4 * -(-nbytes // 3)
    if size > MAX_TEXT:
        raise EncodingError(
            f"{where}: a {what} of {nbytes} bytes is {size} characters as base64, more than a task or "
            f"result can carry (codec.MAX_TEXT = {MAX_TEXT}); send it in parts, or where to find it"
        )


def _refused(dtype: Any) -> str | None:
    """Why arrays of ``dtype`` do not travel as their memory, or None when they do."""
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
        return "only bool, integer, float and complex arrays do (send other data as lists)"
    if dtype.itemsize > (16 if dtype.kind == "c" else 8):
        return "long double's memory differs between machines (convert it to float64 or complex128)"
    return None


def _pack_array(array: Any, where: str, buffers: list[Any] | None = None) -> dict[str, Any]:
    """The array's memory as base64 (or, with ``buffers``, appended there as it is): in C or
    Fortran order as it lies (the transpose of a Fortran array is C-contiguous over the same
    memory), copied once only when it has gaps."""
    dtype = array.dtype
    if isinstance(array, _np.ma.MaskedArray):
        raise EncodingError(f"{where}: a numpy masked array cannot travel: its mask would be lost (send .filled(x))")
    refused = _refused(dtype)
    if refused:
        raise EncodingError(f"{where}: a numpy array of dtype {dtype} cannot travel: {refused}")
    _check_size(array.nbytes, where, f"numpy array ({dtype}, shape {array.shape})")
    if array.flags.c_contiguous:
        order, memory = "C", array
    elif array.flags.f_contiguous:
        order, memory = "F", array.T
    else:
        order, memory = "C", _np.ascontiguousarray(array)
    packed: dict[str, Any] = {TAG: "ndarray", "dtype": dtype.str, "shape": list(array.shape), "order": order}
    if buffers is not None:
        buffers.append(memoryview(memory.reshape(-1).view(_np.uint8)))  # a view: no copy of the memory
        packed["buf"] = len(buffers) - 1
    else:
        packed["b64"] = _Base64(binascii.b2a_base64(memory, newline=False).decode("ascii"))
    return packed


def _unpack_array(value: dict[str, Any], buffers: list[memoryview] | None = None) -> Any:
    if "b64" not in value and "buf" not in value:  # the older form: the values as nested lists
        if _np is None:
            return value["v"]
        return _np.asarray(value["v"], dtype=_np.dtype(value["dtype"])).reshape(value["shape"])
    if _np is None:
        raise EncodingError(f"a numpy array ({value.get('dtype')}) arrived, but numpy is not installed here")
    dtype, order = _np.dtype(value["dtype"]), value.get("order")
    refused = _refused(dtype) or (None if order in _ORDERS else f"order {order!r} is neither 'C' nor 'F'")
    if refused:
        raise EncodingError(f"unreadable numpy array of dtype {dtype}: {refused}")
    raw = _buffer(value, buffers) if "buf" in value else binascii.a2b_base64(value["b64"])
    memory = _np.frombuffer(raw, dtype=dtype)
    # An array over the decoded bytes (or the frame Redis gave) would be read-only: the copy
    # (a memcpy, small beside base64 decoding) gives the user an array of their own to change.
    return memory.reshape(value["shape"], order=order).copy(order=order)


def _buffer(value: dict[str, Any], buffers: list[memoryview] | None) -> memoryview:
    """The frame's buffer a tagged value names (``"buf": k``)."""
    at = value["buf"]
    if buffers is None or type(at) is not int or not 0 <= at < len(buffers):
        raise EncodingError(f"a tagged value names buffer {at!r}, which its data does not have")
    return buffers[at]


class _Base64:
    """Base64 text of a buffer, spliced into the JSON as it is by :func:`encode`: ``json.dumps``
    would scan all of it for characters to escape (base64 has none), about 3 ms a MiB."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _dumps(packed: Any) -> str:
    """``json.dumps`` of a packed value, each :class:`_Base64` in it spliced in afterwards where a
    mark stood (random each call: no user's string can be it)."""
    blobs: list[str] = []
    mark = os.urandom(12).hex()

    def stand_in(node: Any) -> str:
        if type(node) is not _Base64:
            raise TypeError(f"{type(node).__name__} is not JSON")  # not reached: _pack checks types
        blobs.append(node.text)
        return mark

    text = json.dumps(packed, ensure_ascii=False, separators=(",", ":"), default=stand_in)
    if not blobs:
        return text
    parts = text.split(mark)
    out = [parts[0]]
    for blob, part in zip(blobs, parts[1:], strict=True):
        out += [blob, part]
    return "".join(out)


def encode(value: Any) -> str:
    """JSON text for ``value``; raises :class:`EncodingError` naming what cannot travel, or
    when the text would be longer than :data:`MAX_TEXT`."""
    if type(value) is str:  # the common case: no walk needed
        return _checked(json.dumps(value, ensure_ascii=False))
    return _checked(_dumps(_pack(value, "")))


def _checked(text: str) -> str:
    """``text``, unless it is longer than :data:`MAX_TEXT`."""
    if len(text) > MAX_TEXT:
        raise EncodingError(
            f"value: its JSON text has {len(text)} characters, more than a task or result can carry "
            f"(codec.MAX_TEXT = {MAX_TEXT})"
        )
    return text


FRAME = b"\x00mt-frame-1\n"
"""How a frame starts (see :func:`encode_binary`): no JSON text starts with a NUL."""
BINARY_BYTES = 64 * 1024
"""Arrays and bytes of this many bytes in all make a task's data a frame (the size from which
a task's data also travels by reference, ``messages.REF_BYTES``)."""
_LENGTH = 4  # bytes of a frame's header length, big-endian


def encode_binary(value: Any, min_bytes: int = BINARY_BYTES) -> str | bytes:
    """What :func:`encode` gives, or, when ``value`` carries :data:`BINARY_BYTES` or more of
    arrays and bytes, a *frame*: the same JSON for everything else, and the memory of each
    array or bytes after it as it lies. A frame costs a copy of the memory where base64 cost
    about 3 ms a MiB to write and as much to read, and a third more room.

    Layout: :data:`FRAME`, the header's length (4 bytes, big-endian), the header (JSON:
    ``{"v": the value, "b": [the length of each buffer]}``, each array or bytes in it
    tagged with ``"buf": k``), then the buffers one after the other. Only the books'
    Redis keeps frames (a task's data); results, records written by hand, and messages on
    another broker stay text. ``min_bytes``: from how many bytes of arrays and bytes (for
    tests). Raises :class:`EncodingError` as :func:`encode` does."""
    if type(value) is str:
        return encode(value)
    buffers: list[Any] = []  # bytes, and arrays' memory as bytes (their len() is their size)
    packed = _pack(value, "", buffers)
    lengths = [len(b) for b in buffers]
    total = sum(lengths)
    if not buffers:  # nothing to carry as memory: the walk just made is the text's
        return _checked(_dumps(packed))
    if total < min_bytes:  # small buffers: as base64, which needs a walk of its own
        return encode(value)
    header = json.dumps({"v": packed, "b": lengths}, ensure_ascii=False, separators=(",", ":")).encode()
    size = len(FRAME) + _LENGTH + len(header) + total
    if size > MAX_TEXT:
        raise EncodingError(
            f"value: its data has {size} bytes, more than a task can carry (codec.MAX_TEXT = {MAX_TEXT})"
        )
    return b"".join([FRAME, len(header).to_bytes(_LENGTH, "big"), header, *buffers])


def is_frame(data: object) -> bool:
    """Whether ``data`` is a frame (:func:`encode_binary`), not JSON text."""
    return isinstance(data, bytes) and data.startswith(FRAME)


def _header_span(data: bytes | memoryview) -> tuple[int, int]:
    """Where a frame's header starts and ends."""
    start = len(FRAME) + _LENGTH
    return start, start + int.from_bytes(data[len(FRAME) : start], "big")


def _decode_frame(data: bytes) -> Any:
    view = memoryview(data)
    start, end = _header_span(view)
    try:
        header = json.loads(view[start:end].tobytes())
        lengths, packed = header["b"], header["v"]
        if end + sum(lengths) != len(data) or any(type(n) is not int or n < 0 for n in lengths):
            raise ValueError(f"its header accounts for {end + sum(lengths)} of its {len(data)} bytes")
    except (ValueError, TypeError, KeyError) as exc:
        raise EncodingError(f"an unreadable frame: {exc}") from None
    buffers, at = [], end
    for length in lengths:
        buffers.append(view[at : at + length])
        at += length
    return _unpack(packed, buffers)


def as_text(data: str | bytes) -> str:
    """Task data as :func:`encode`'s text, whatever form the books keep it in."""
    if is_frame(data):
        return encode(decode(data))
    return data.decode() if isinstance(data, bytes) else data


def preview(data: str | bytes, limit: int) -> str:
    """The start of task data, to show (Flower's ``argsrepr``, logs): a frame by its header,
    where arrays show their dtype and shape, not their memory."""
    if isinstance(data, str):
        return data[:limit]
    if data.startswith(FRAME):
        start, end = _header_span(data)
        return data[start : min(end, start + limit)].decode(errors="replace")
    return data[:limit].decode(errors="replace")


def encode_arrays_as_lists(value: Any) -> str:
    """The text :func:`encode` gave ``value`` when arrays travelled as nested lists, so that
    :mod:`.books.runs` still knows the fingerprint of a run begun then. It costs what that
    form cost, but only where there are arrays."""
    text = encode(value)
    if f'"{TAG}":"ndarray"' not in text:  # a tag, never a user's string: theirs have \" in them
        return text

    def lists(node: Any) -> Any:
        if type(node) is list:
            return [lists(n) for n in node]
        if type(node) is not dict:
            return node
        if node.get(TAG) != "ndarray":
            return {k: lists(v) for k, v in node.items()}
        array = _unpack_array(node)
        if array.dtype.kind == "c":
            raise EncodingError("complex arrays did not travel then")  # what that encode raised too
        return {TAG: "ndarray", "dtype": node["dtype"], "shape": node["shape"], "v": array.tolist()}

    return json.dumps(lists(json.loads(text)), ensure_ascii=False, separators=(",", ":"))


_ARRAY_START = '{"__mt__":"ndarray",'
_ARRAY_DATA = ',"b64":"'


def decode(text: str | bytes) -> Any:
    """The value ``encode`` was given (numpy arrays back as arrays when numpy is installed).
    ``bytes`` as Redis gave them are read without a copy where they hold one array."""
    if isinstance(text, bytes):
        if text.startswith(FRAME):
            return _decode_frame(text)
        if text.startswith(_ARRAY_START.encode()) and text.endswith(b'"}'):
            return _decode_array(text, _ARRAY_DATA.encode(), b'"', b"}")
    elif text.startswith(_ARRAY_START) and text.endswith('"}'):
        return _decode_array(text, _ARRAY_DATA, '"', "}")
    return _unpack(json.loads(text))


def _decode_array(text: Any, marker: Any, quote: Any, brace: Any) -> Any:
    """A task that is one array, as :func:`encode` writes it (its base64 last): only the few
    fields before the base64 go through ``json.loads``, which would scan all of it (1.2 ms a
    MiB, a fifth of the decoding), and from ``bytes`` the base64 is decoded in place. Anything
    else is read the usual way. (``text`` is ``str`` or ``bytes``, the rest of its kind.)"""
    at = text.find(marker)
    start, end = at + len(marker), len(text) - 2
    if at < 0 or text.find(quote, start, end) >= 0:
        return _unpack(json.loads(text))
    value = json.loads(text[:at] + brace)
    if type(value) is not dict or set(value) != {TAG, "dtype", "shape", "order"}:
        return _unpack(json.loads(text))
    value["b64"] = memoryview(text)[start:end] if isinstance(text, bytes) else text[start:end]
    return _unpack_array(value)


def unpack(value: Any) -> Any:
    """The value ``encode`` was given, from its JSON already parsed (a message carries task
    data as a JSON value, see :func:`.books.messages.build`)."""
    return _unpack(value)


def _plain(value: Any) -> Any:
    """Replace numpy values by Python ones so ``repr`` is a Python literal."""
    if _np is not None:
        if isinstance(value, _np.ndarray):
            return value.tolist()
        if isinstance(value, _np.generic):
            return value.item()
    kind = type(value)
    if kind is list:
        return [_plain(v) for v in value]
    if kind is tuple:
        return tuple(_plain(v) for v in value)
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    if kind is set:
        return {_plain(v) for v in value}
    if kind is frozenset:
        return frozenset(_plain(v) for v in value)
    return value


def to_text(value: Any) -> str:
    """The legacy text form: a ``str`` as itself, anything else as a Python literal."""
    if type(value) is str:
        return value
    return repr(_plain(value))
