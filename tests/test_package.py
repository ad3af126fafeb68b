"""The package installs as one `seqmodels`: no top-level `kernels` or `data` module shadows others."""
import subprocess
import sys


def test_no_top_level_kernels_or_data(tmp_path):
    code = (
        "import importlib.util, transformers, seqmodels, seqmodels.kernels, seqmodels.data\n"
        "assert seqmodels.kernels.__name__ == 'seqmodels.kernels'\n"
        "for name in ('kernels', 'data'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    origin = spec.origin if spec else None\n"
        "    assert origin is None or 'seqmodels' not in origin and '/kernels/__init__' not in origin, origin\n"
        "print('ok')\n"
    )
    # run from an unrelated directory, as a user would: the repository root is not on the import path
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
