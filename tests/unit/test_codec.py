"""Task data travels as JSON and comes back exactly; the legacy text form literal_evals back."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from mutitask_celery import codec
from mutitask_celery.books.ledger import ChannelStats
from mutitask_celery.errors import EncodingError
from mutitask_celery.serving.producer import _Feed

VALUES = [
    "https://example.org/page/1/",
    "",
    0,
    -7,
    3.5,
    True,
    None,
    [1, "two", [3.0]],
    (1, (2, 3), "x"),
    {"a": 1, "b": [1, 2]},
    {1: "int key", (2, 3): "tuple key"},
    {"__mt__": "a user's own key"},
    b"\x00\xffbytes",
    {1, 2, 3},
    "üñíçødé ✓",
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value
    assert type(codec.decode(codec.encode(value))) is type(value)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_text_form_literal_evals_back(value: object) -> None:
    text = codec.to_text(codec.decode(codec.encode(value)))
    if isinstance(value, str):
        assert text == value  # a str task arrives as itself
    else:
        assert ast.literal_eval(text) == value


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float32", "float64", "bool"])
def test_numpy_array_round_trips_with_dtype_and_shape(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    back = codec.decode(codec.encode(array))
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)


def test_empty_array_keeps_its_shape() -> None:
    back = codec.decode(codec.encode(np.zeros((0, 5))))
    assert back.shape == (0, 5)


def test_numpy_array_text_form_is_nested_lists() -> None:
    image = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    text = codec.to_text(codec.decode(codec.encode(image)))
    assert text == "[[1, 2], [3, 4]]"
    assert np.array_equal(np.array(ast.literal_eval(text)), image)


def test_numpy_scalars_become_python_numbers() -> None:
    assert codec.decode(codec.encode([np.int64(5), np.float32(0.5)])) == [5, 0.5]


@pytest.mark.parametrize("value", [object(), {"k": lambda x: x}, np.array(["a", "b"]), [1, {2, frozenset()}, open]])
def test_what_json_cannot_carry_is_refused_by_name(value: object) -> None:
    with pytest.raises(EncodingError) as err:
        codec.encode(value)
    assert "cannot travel" in str(err.value)


def test_unknown_tag_is_a_clear_error() -> None:
    with pytest.raises(EncodingError, match="unknown tagged value 'future'"):
        codec.decode('{"__mt__": "future", "v": 1}')


def test_an_array_travels_as_base64_of_its_memory() -> None:
    image = np.array([[1, 2], [3, 4]], dtype=">i2", order="F")  # big-endian, Fortran order: as it lies
    text = codec.encode(image)
    assert text == '{"__mt__":"ndarray","dtype":">i2","shape":[2,2],"order":"F","b64":"AAEAAwACAAQ="}'
    back = codec.decode(text)
    assert back.dtype.str == ">i2" and back.flags.f_contiguous and np.array_equal(back, image)


@pytest.mark.parametrize(
    "array",
    [np.arange(12.0).reshape(3, 4), np.asfortranarray(np.ones((3, 4), "c8")), np.array(7, "u2"), np.zeros((0, 3))],
    ids=["C", "F", "0-d", "empty"],
)
def test_a_decoded_array_is_the_users_to_change(array: np.ndarray) -> None:
    back = codec.decode(codec.encode(array))
    assert back.flags.writeable and back.flags.owndata and back.flags.aligned
    back[...] = 1  # in place, as task functions do
    assert np.all(back == 1)


def test_the_older_nested_list_form_still_decodes_and_is_writable() -> None:
    # As 0.1.0 and 0.2.0 wrote it (value.tolist()): dead letters and results saved then.
    text = '{"__mt__":"ndarray","dtype":">i4","shape":[2,3],"v":[[1,2,3],[4,5,6]]}'
    back = codec.decode(text)
    assert back.dtype.str == ">i4" and back.shape == (2, 3) and back.flags.writeable
    assert np.array_equal(back, [[1, 2, 3], [4, 5, 6]])
    assert codec.to_text(back) == "[[1, 2, 3], [4, 5, 6]]"


def test_without_numpy_the_older_form_gives_lists_and_the_new_one_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    text = codec.encode(np.arange(3))
    monkeypatch.setattr(codec, "_np", None)
    assert codec.decode('{"__mt__":"ndarray","dtype":"<i8","shape":[3],"v":[0,1,2]}') == [0, 1, 2]
    with pytest.raises(EncodingError, match="a numpy array .* arrived, but numpy is not installed here"):
        codec.decode(text)


STRUCTURED = np.zeros(2, dtype=[("x", "i4"), ("y", "f8")])
UNION = np.zeros(2, dtype=np.dtype(("i4", [("lo", "i2"), ("hi", "i2")])))  # kind 'i', but with fields


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.array([1, "a"], dtype=object), "dtype object cannot travel: only bool, integer, float and complex"),
        (STRUCTURED, "cannot travel: only bool, integer, float and complex"),
        (UNION, "cannot travel: only bool, integer, float and complex"),
        (np.array(["2026-01-01"], dtype="datetime64[D]"), "dtype datetime64.D. cannot travel"),
        (np.array([1], dtype="timedelta64[s]"), "dtype timedelta64.s. cannot travel"),
        (np.array(["text"]), "dtype <U4 cannot travel"),
        (np.array([b"raw"]), "dtype |S3 cannot travel"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), "a numpy masked array cannot travel: its mask would be lost"),
    ],
    ids=["object", "structured", "union", "datetime", "timedelta", "str", "bytes", "masked"],
)
def test_arrays_that_cannot_travel_are_refused_with_their_path(array: np.ndarray, problem: str) -> None:
    with pytest.raises(EncodingError, match=problem) as err:
        codec.encode({"batch": [1, array]})
    assert str(err.value).startswith("['batch'][1]: ")


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is double here")
def test_long_double_is_refused_its_memory_differs_between_machines() -> None:
    with pytest.raises(EncodingError, match=r"^\[0\]: a numpy array of dtype float128 cannot travel: long double"):
        codec.encode([np.ones(2, np.longdouble)])
    with pytest.raises(EncodingError, match=r"^value: a numpy float128 cannot travel"):
        codec.encode(np.longdouble(1))  # a scalar used to recurse without end


def test_an_array_too_big_for_redis_is_refused_before_it_is_built() -> None:
    huge = np.broadcast_to(np.float64(1.5), (8192, 8192))  # 512 MiB to numpy, 8 bytes of memory
    with pytest.raises(EncodingError) as err:
        codec.encode({"image": huge})
    message = str(err.value)
    assert message.startswith("['image']: a numpy array (float64, shape (8192, 8192)) of 536870912 bytes is ")
    assert f"more than a task or result can carry (codec.MAX_TEXT = {codec.MAX_TEXT})" in message
    assert codec.MAX_TEXT < codec.REDIS_MAX_STRING  # its message carries the text as it is, and a little more


def test_bytes_and_whole_texts_too_long_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_TEXT", 200)
    assert len(codec.encode(np.zeros(96, np.uint8))) == 196  # 128 characters of base64: it fits
    assert len(codec.encode("z" * 198)) == 200
    with pytest.raises(EncodingError, match=r"^\[1\]: a numpy array \(uint8, shape \(151,\)\) of 151 bytes is 204"):
        codec.encode([0, np.zeros(151, np.uint8)])
    with pytest.raises(EncodingError, match=r"^\['b'\]: a bytearray of 151 bytes is 204 characters"):
        codec.encode({"b": bytearray(151)})
    with pytest.raises(EncodingError, match="^value: its JSON text has 215 characters, more than"):
        codec.encode([np.zeros(108, np.uint8)])  # 144 characters of base64, 215 with its tag
    with pytest.raises(EncodingError, match="^value: its JSON text has 201 characters"):
        codec.encode("z" * 199)


def test_an_unreadable_array_is_a_clear_error() -> None:
    with pytest.raises(EncodingError, match="unreadable numpy array of dtype object: only bool"):
        codec.decode('{"__mt__":"ndarray","dtype":"|O","shape":[1],"order":"C","b64":"AAAAAAAAAAA="}')
    with pytest.raises(EncodingError, match="order 'K' is neither 'C' nor 'F'"):
        codec.decode('{"__mt__":"ndarray","dtype":"|u1","shape":[1],"order":"K","b64":"AA=="}')
    with pytest.raises(ValueError):  # the shape does not match the memory: undecodable task data
        codec.decode('{"__mt__":"ndarray","dtype":"|u1","shape":[2],"order":"C","b64":"AA=="}')


class _Store:
    """Stands in for the dead-letter store: what the server dead-letters as unpublishable."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, str]] = []

    def add_unpublishable(self, channel: int, text: str, reason: str) -> str:
        self.records.append((channel, text, reason))
        return "id"


def test_the_server_dead_letters_an_array_too_big_and_loses_nothing_else() -> None:
    huge = np.broadcast_to(np.uint8(7), (2**30,))  # 1 GiB to numpy, 1 byte of memory
    feed = _Feed(3, iter([np.arange(3), huge, "after", np.ones((2, 2))]), ChannelStats(), True)
    store = _Store()
    items = feed.take(10, store)  # type: ignore[arg-type]  # only add_unpublishable is used
    sent = [codec.decode(data) for _, data in items]
    assert np.array_equal(sent[0], np.arange(3)) and sent[1] == "after" and np.array_equal(sent[2], np.ones((2, 2)))
    assert feed.index == 4 and feed.exhausted
    ((channel, text, reason),) = store.records
    assert channel == 3 and reason.startswith("unserializable: value: a numpy array (uint8, shape (1073741824,))")
    assert text == repr(huge) and len(text) < 200  # numpy's repr shows a huge array in brief


def test_the_text_arrays_had_as_lists_is_made_again_for_old_fingerprints() -> None:
    value = {"a": np.array([[1, 2]], ">u2"), "b": ["ü", 1.5]}
    old = '{"a":{"__mt__":"ndarray","dtype":">u2","shape":[1,2],"v":[[1,2]]},"b":["ü",1.5]}'
    assert codec.encode_arrays_as_lists(value) == old != codec.encode(value)
    assert codec.encode_arrays_as_lists(["no arrays", {1: 2}]) == codec.encode(["no arrays", {1: 2}])
    with pytest.raises(EncodingError, match="complex arrays did not travel then"):
        codec.encode_arrays_as_lists([np.ones(2, "c16")])


@pytest.mark.parametrize(
    "value",
    [np.arange(12, dtype="<i4").reshape(3, 4), np.asfortranarray(np.ones((2, 3))), (np.zeros(2), b"x"), "text"],
    ids=["array", "fortran", "tuple", "str"],
)
def test_text_as_bytes_from_redis_decodes_the_same(value: object) -> None:
    """A device reads big tasks' data as bytes (no decoding of the reply): one array is read
    in place, anything else the usual way."""
    text = codec.encode(value)
    for form in (text, text.encode()):
        back = codec.decode(form)
        assert type(back) is type(value)
        assert codec.encode(back) == text


def test_an_array_text_with_a_field_after_its_data_is_read_the_usual_way() -> None:
    text = '{"__mt__":"ndarray","dtype":"|u1","shape":[2],"order":"C","b64":"AAE=","extra":"x"}'
    for form in (text, text.encode()):
        assert codec.decode(form).tolist() == [0, 1]
