"""The shared helpers of the ops: the precision rule (compute_dtype) and the one integer check (check_int)."""
import pytest
import torch

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels._validate import check_int


@pytest.mark.parametrize(
    "dtype, expected",
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
)
def test_compute_dtype(dtype, expected):
    assert compute_dtype(dtype) == expected


@pytest.mark.parametrize("value, minimum, maximum", [(1, 1, None), (0, 0, None), (8, 1, 8), (2, 2, None)])
def test_check_int_accepts(value, minimum, maximum):
    check_int("n", value, minimum, maximum)


@pytest.mark.parametrize(
    "value, minimum, maximum, message",
    [
        (0, 1, None, r"n must be a positive integer, got 0"),
        (True, 1, None, r"n must be a positive integer, got True"),
        (2.0, 1, None, r"n must be a positive integer, got 2.0"),
        (-1, 0, None, r"n must be a non-negative integer, got -1"),
        (1, 2, None, r"n must be an integer >= 2, got 1"),
        (9, 1, 8, r"n must be an integer in \[1, 8\], got 9"),
    ],
)
def test_check_int_rejects(value, minimum, maximum, message):
    with pytest.raises(ValueError, match=message):
        check_int("n", value, minimum, maximum)
