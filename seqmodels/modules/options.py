"""Validation of per-family mixer options: each failure names the option as it is written in a config
(`mixer_options.<family>.<name>`), what it must be and what it got."""
from __future__ import annotations

from typing import Optional

from seqmodels.kernels._validate import check_int


def check_int_option(family: str, name: str, value, minimum: int = 1, maximum: Optional[int] = None,
                     optional: bool = False) -> None:
    """mixer_options.<family>.<name> is an integer in [minimum, maximum] (or None when `optional`)."""
    if optional and value is None:
        return
    check_int(f"mixer_options.{family}.{name}", value, minimum, maximum)
