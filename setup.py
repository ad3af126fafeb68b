"""Package discovery for the one-package layout (metadata lives in pyproject.toml).

`kernels/` and `data/` ship as `seqmodels.kernels` and `seqmodels.data`; their sub-packages
(one folder per op, lra/, ...) are found here so a new folder needs no edit to the build files.
"""
from setuptools import find_packages, setup


def _packages(root: str, prefix: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_packages(root)]


setup(
    packages=_packages("seqmodels", "seqmodels")
    + _packages("kernels", "seqmodels.kernels")
    + _packages("data", "seqmodels.data"),
)
