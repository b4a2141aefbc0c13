"""How task data and results travel: JSON text, with tagged forms for what JSON
lacks (tuples, numpy arrays, bytes, sets, dicts with non-string keys).

The tag makes a value round-trip exactly as the generator yielded it, so a
dead-lettered task reloads as the same task. ``to_text`` gives the legacy form
the original handed to task functions: a ``str`` stays itself, anything else
becomes Python-literal text that ``ast.literal_eval`` reads back (numpy arrays
as nested lists), so a seed script's ``eval(task)`` keeps working.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from mutitask_celery.errors import EncodingError

TAG = "__mt__"
_SCALARS = (str, int, float, bool, type(None))

try:  # numpy is optional: arrays are supported when it is installed.
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only without numpy
    _np = None  # type: ignore[assignment]


def _pack(value: Any, path: str) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [_pack(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is tuple:
        return {TAG: "tuple", "v": [_pack(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: _pack(v, f"{path}[{k!r}]") for k, v in value.items()}
        return {
            TAG: "dict",
            "v": [[_pack(k, f"{path}.key"), _pack(v, f"{path}[{k!r}]")] for k, v in value.items()],
        }
    if kind in (bytes, bytearray):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if kind in (set, frozenset):
        return {TAG: kind.__name__, "v": [_pack(v, f"{path}.item") for v in value]}
    if _np is not None:
        if isinstance(value, _np.ndarray):
            if value.dtype.kind not in "biuf":
                raise EncodingError(f"{path or 'value'}: numpy array of dtype {value.dtype} cannot travel as JSON")
            return {TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape), "v": value.tolist()}
        if isinstance(value, _np.generic):
            return _pack(value.item(), path)
    raise EncodingError(
        f"{path or 'value'}: a {kind.__module__}.{kind.__qualname__} cannot travel as JSON "
        "(use str, int, float, bool, None, list, tuple, dict, bytes, set or a numpy array)"
    )


def _unpack(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_unpack(v) for v in value]
    if kind is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: _unpack(v) for k, v in value.items()}
    if tag == "tuple":
        return tuple(_unpack(v) for v in value["v"])
    if tag == "dict":
        return {_unpack(k): _unpack(v) for k, v in value["v"]}
    if tag == "bytes":
        return base64.b64decode(value["v"])
    if tag == "set":
        return {_unpack(v) for v in value["v"]}
    if tag == "frozenset":
        return frozenset(_unpack(v) for v in value["v"])
    if tag == "ndarray":
        if _np is None:
            return value["v"]
        return _np.asarray(value["v"], dtype=_np.dtype(value["dtype"])).reshape(value["shape"])
    raise EncodingError(f"unknown tagged value {tag!r} (written by a newer version?)")


def encode(value: Any) -> str:
    """JSON text for ``value``; raises :class:`EncodingError` naming what cannot travel."""
    if type(value) is str:  # the common case: no walk needed
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(_pack(value, ""), ensure_ascii=False, separators=(",", ":"))


def decode(text: str | bytes) -> Any:
    """The value ``encode`` was given (numpy arrays back as arrays when numpy is installed)."""
    return _unpack(json.loads(text))


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
