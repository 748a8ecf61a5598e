"""Shared fixtures: the torch golden bytes and a byte-exact comparison."""

import os

import numpy as np
import pytest

GOLDEN = os.path.join(os.path.dirname(__file__), "fbgemm_golden.npz")


def _same_bytes(actual, expected):
    """Assert equal dtype, shape and bytes (so 0.0 != -0.0)."""
    actual = np.ascontiguousarray(actual)
    expected = np.ascontiguousarray(expected)
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    a = actual.reshape(-1).view(np.uint8)
    e = expected.reshape(-1).view(np.uint8)
    if not np.array_equal(a, e):
        flat = int(np.argmax(a != e)) // actual.itemsize
        n_bad = int((a != e).reshape(-1, actual.itemsize).any(axis=1).sum())
        at = np.unravel_index(flat, actual.shape)
        raise AssertionError(
            f"{n_bad} of {actual.size} elements differ; first at {tuple(map(int, at))}: "
            f"{actual[at]!r} != {expected[at]!r}")


@pytest.fixture(scope="session")
def same_bytes():
    """``same_bytes(actual, expected)``: byte-for-byte equality with a useful message."""
    return _same_bytes


@pytest.fixture(scope="session")
def golden():
    """The arrays torch produced (tests/fbgemm_golden.npz, keys in SPEC.md section 9)."""
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def _same_error(ref_call, fast_call):
    """Both calls raise; the same exception type with the same message."""
    with pytest.raises(Exception) as ref:
        ref_call()
    with pytest.raises(Exception) as got:
        fast_call()
    assert type(got.value) is type(ref.value), f"{type(got.value)} != {type(ref.value)}: {got.value}"
    assert str(got.value) == str(ref.value)
    return ref.value


@pytest.fixture(scope="session")
def same_error():
    """``same_error(ref_call, fast_call)``: both raise the same exception type and message."""
    return _same_error
