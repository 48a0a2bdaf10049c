"""Our JCS gives exactly the bytes of the reference ``rfc8785`` package."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract import jcs

VECTORS = json.loads((Path(__file__).parent / "data" / "envelopes.json").read_text())


def json_values_with(keys: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=25,
    )


json_values = json_values_with(st.text(max_size=8))


@settings(max_examples=3000)
@given(json_values)
def test_matches_reference(value: object) -> None:
    assert jcs.dumps(value) == rfc8785.dumps(value)


@settings(max_examples=3000)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_match_reference(value: float) -> None:
    assert jcs.es6_number(value) == rfc8785.dumps(value).decode()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-7, "1e-7"),
        (100.0, "100"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (0.000001, "0.000001"),
        (-0.0, "0"),
        (22.5431, "22.5431"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (123456789.125, "123456789.125"),
    ],
)
def test_known_numbers(value: float, text: str) -> None:
    assert jcs.es6_number(value) == text


def test_vectors() -> None:
    for vector in VECTORS["envelopes"]:
        assert jcs.dumps(vector["unsigned"]) == vector["jcs_utf8"].encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**53, {1: 2}, "\ud800", object()])
def test_out_of_domain(bad: object) -> None:
    with pytest.raises(jcs.CanonicalizationError):
        jcs.dumps(bad)


ascii_values = json_values_with(st.text(st.characters(max_codepoint=127), max_size=8))


@settings(max_examples=3000)
@given(ascii_values)
def test_fast_path_matches_reference(value: object) -> None:
    # Values with ASCII keys mostly take the C-encoder path; both paths must agree with the
    # reference, and with each other.
    expected = rfc8785.dumps(value)
    assert jcs.dumps(value) == expected
    if jcs._plain(value):
        assert jcs._enc(value).encode() == expected


@pytest.mark.parametrize(
    "value",
    [1e-4, 0.00009999999999999999, 9999999999999998.0, 1e16, 123.0, 0.1, -0.0, 1e-5, 0.5],
)
def test_float_boundaries_of_the_fast_path(value: float) -> None:
    assert jcs.dumps({"x": value, "y": [value]}) == rfc8785.dumps({"x": value, "y": [value]})


def test_envelope_takes_the_fast_path() -> None:
    for vector in VECTORS["envelopes"]:
        assert jcs._plain(vector["unsigned"])
