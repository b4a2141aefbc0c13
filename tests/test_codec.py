"""Task data travels as JSON and comes back exactly; the legacy text form literal_evals back."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from mutitask_celery import codec
from mutitask_celery.errors import EncodingError

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
    assert "cannot travel as JSON" in str(err.value)


def test_unknown_tag_is_a_clear_error() -> None:
    with pytest.raises(EncodingError, match="unknown tagged value 'future'"):
        codec.decode('{"__mt__": "future", "v": 1}')
