"""The README's quick start is real code: it runs, and the README shows exactly this file's code."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_shows_the_quickstart_file():
    code = (ROOT / "examples" / "quickstart.py").read_text().split('"""', 2)[2].strip()
    assert code in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_quickstart_searches_then_compresses_to_int8(tmp_path, monkeypatch):
    import sys

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import quickstart

    out = quickstart.main(max_epochs=3, out_dir=str(tmp_path))
    assert set(out["arch"]) == {"block1"} and out["arch"]["block1"] in {"conv3", "conv5", "skip"}
    int8 = out["int8"]
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())
    from lightning_nas.compress.quantize import allow_int8_kernels

    with allow_int8_kernels():
        assert int8(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    sys.modules.pop("quickstart", None)
