"""Property tests (hypothesis): the task encoding, the console's parser, record decoding."""

from __future__ import annotations

import ast
import io
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mutitask_celery import codec
from mutitask_celery.books.records import FailedTask, decode_record
from mutitask_celery.errors import EncodingError
from mutitask_celery.serving.console import Console, ConsoleError

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | st.text()
hashable = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=5)
values = st.recursive(
    scalars | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=3)
        | st.sets(st.integers() | st.text(max_size=4), max_size=4)
    ),
    max_leaves=12,
)
arrays = hnp.arrays(
    dtype=st.sampled_from(["uint8", "int32", "int64", "float32", "float64", "bool"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    elements={"allow_nan": False, "allow_infinity": False},
)


@given(values)
def test_any_value_round_trips(value: object) -> None:
    back = codec.decode(codec.encode(value))
    assert back == value and type(back) is type(value)


@given(values)
def test_text_form_literal_evals_back(value: object) -> None:
    text = codec.to_text(codec.decode(codec.encode(value)))
    if isinstance(value, str):
        assert text == value
    else:
        assert ast.literal_eval(text) == value


@given(arrays)
def test_any_array_round_trips(array: np.ndarray) -> None:
    back = codec.decode(codec.encode(array))
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assert np.array_equal(
        np.array(ast.literal_eval(codec.to_text(back)), dtype=array.dtype).reshape(array.shape), array
    )


# Every dtype that travels as its memory, in either byte order; complex apart, as the
# nested-list form of 0.1.0 and 0.2.0 could not carry it.
real_dtypes = (
    hnp.boolean_dtypes()
    | hnp.integer_dtypes(endianness="?")
    | hnp.unsigned_integer_dtypes(endianness="?")
    | hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64))
)
numeric_dtypes = real_dtypes | hnp.complex_number_dtypes(endianness="?")


@st.composite
def laid_out(draw: st.DrawFn, dtypes: st.SearchStrategy[np.dtype[Any]]) -> np.ndarray:
    """An array as users hold one: C or Fortran order, or a view with gaps or backward steps."""
    layout = draw(st.sampled_from(["C", "F", "gaps", "view"]))
    if layout == "C":  # any shape: 0-d and empty ones too
        return draw(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
    array = draw(hnp.arrays(dtypes, hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=6)))
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "gaps":  # every other column, maybe backwards: never contiguous
        gaps: np.ndarray = array[..., :: draw(st.sampled_from([2, 3, -2]))]
        return gaps
    index = hnp.basic_indices(array.shape, min_dims=array.ndim, allow_newaxis=False, allow_ellipsis=False)
    view: np.ndarray = array[draw(index)]
    return view


def old_form(value: Any) -> str:
    """The text 0.1.0 and 0.2.0 made of ``value``, arrays as ``value.tolist()``: here for
    arrays at any depth in lists and dicts with str keys (no "__mt__" key)."""

    def pack(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return {"__mt__": "ndarray", "dtype": v.dtype.str, "shape": list(v.shape), "v": v.tolist()}
        if isinstance(v, list):
            return [pack(x) for x in v]
        if isinstance(v, dict):
            return {k: pack(x) for k, x in v.items()}
        return v

    return json.dumps(pack(value), ensure_ascii=False, separators=(",", ":"))


@given(laid_out(numeric_dtypes))
def test_any_numeric_array_travels_as_its_memory_and_comes_back_exactly(array: np.ndarray) -> None:
    text = codec.encode(array)
    assert '"b64":' in text and '"v":' not in text
    back = codec.decode(text)
    assert back.dtype.str == array.dtype.str and back.shape == array.shape
    assert back.tobytes() == array.tobytes()  # every bit: NaN payloads, -0.0
    assert back.flags.writeable and back.flags.owndata
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert back.flags.f_contiguous  # it came as it lay
    assert codec.to_text(back) == codec.to_text(array)  # the legacy text form is unchanged


@given(laid_out(real_dtypes))
def test_the_nested_list_form_of_0_2_0_decodes_to_the_same_array(array: np.ndarray) -> None:
    back = codec.decode(old_form(array))
    assert back.dtype.str == array.dtype.str and back.shape == array.shape and back.flags.writeable
    assert np.array_equal(back, array, equal_nan=True)


holding_arrays = st.recursive(
    laid_out(real_dtypes) | scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@given(holding_arrays)
def test_the_text_of_0_2_0_is_made_again_for_fingerprints_of_runs_begun_then(value: Any) -> None:
    assert codec.encode_arrays_as_lists(value) == old_form(value)


@given(hashable)
def test_hashable_values_as_dict_keys_round_trip(key: object) -> None:
    value = {key: "v"}
    assert codec.decode(codec.encode(value)) == value


class _Nothing:
    """Stands in for the producer, store and devices: parsing needs none of them."""


def console() -> Console:
    return Console(_Nothing(), _Nothing(), _Nothing(), io.StringIO())  # type: ignore[arg-type]


@given(st.text(max_size=60))
@settings(max_examples=300)
def test_parser_accepts_or_refuses_with_a_message(line: str) -> None:
    try:
        parsed = console().parse(line)
    except ConsoleError as exc:
        assert str(exc)
        return
    if parsed is not None:
        command, args = parsed
        assert len(args) == len(command.params) and all(a >= 0 for a in args)


@given(st.sampled_from(sorted(console().commands)), st.lists(st.integers(0, 10**6), max_size=3))
def test_parser_reads_every_command_with_numbers(name: str, numbers: list[int]) -> None:
    line = " ".join([name, *map(str, numbers)])
    con = console()
    command = con.commands[name]
    try:
        parsed = con.parse(line)
    except ConsoleError:
        assert len(numbers) != len(command.params) and not (name == "help" and len(numbers) == 1)
        return
    assert parsed is not None
    if name != "help" or not numbers:
        assert parsed[1] == numbers


fields = st.dictionaries(
    st.sampled_from(
        [
            "v",
            "id",
            "channel",
            "data",
            "reason",
            "traceback",
            "device",
            "first_failed",
            "last_failed",
            "failures",
            "result",
            "other",
        ]
    ),
    st.text(max_size=12) | st.integers().map(str) | values.map(codec.encode),
    max_size=12,
)


@given(fields)
@settings(max_examples=300)
def test_any_record_hash_decodes_or_is_skipped(raw: dict[str, str]) -> None:
    record = decode_record(raw)
    assert record is None or isinstance(record, FailedTask)
    if record is not None:
        assert isinstance(record.channel, int) and isinstance(record.failures, int)
        assert isinstance(record.first_failed, float) and isinstance(record.last_failed, float)


@given(laid_out(numeric_dtypes))
def test_any_numeric_array_travels_in_a_frame_as_its_memory_and_comes_back_exactly(array: np.ndarray) -> None:
    frame = codec.encode_binary(array, min_bytes=0)
    assert isinstance(frame, bytes) and codec.is_frame(frame)
    assert frame.endswith(np.ascontiguousarray(array.T if _fortran(array) else array).tobytes())  # as it lies
    back = codec.decode(frame)
    assert back.dtype.str == array.dtype.str and back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert back.flags.writeable and back.flags.owndata
    assert codec.as_text(frame) == codec.encode(array)  # the text form, for readers of text


def _fortran(array: np.ndarray) -> bool:
    return bool(array.flags.f_contiguous and not array.flags.c_contiguous)


@given(holding_arrays | values)
def test_any_value_round_trips_through_a_frame(value: Any) -> None:
    frame = codec.encode_binary(value, min_bytes=0)
    # Compared as text after one decoding each (a decoded set has an order of its own)
    assert codec.encode(codec.decode(frame)) == codec.encode(codec.decode(codec.encode(value)))


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=200))
def test_a_frame_cut_short_or_run_on_is_refused_by_name(junk: bytes, cut: int) -> None:
    frame = codec.encode_binary([np.arange(5), b"xy"], min_bytes=0)
    assert isinstance(frame, bytes)
    damaged = frame[: len(codec.FRAME) + cut] + junk
    assume(len(damaged) != len(frame))  # cut short or run on (no checksum: Redis keeps bytes whole)
    with pytest.raises(EncodingError, match="frame"):
        codec.decode(damaged)


@given(holding_arrays | values)
def test_a_value_with_little_memory_in_it_is_kept_as_the_same_text(value: Any) -> None:
    assert codec.encode_binary(value) == codec.encode(value)  # under BINARY_BYTES: no frame
