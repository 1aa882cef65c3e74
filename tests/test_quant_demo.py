"""The demo's distill and quantize stages run end to end and record int8 measurements."""

import pytest


@pytest.mark.slow
def test_demo_distill_and_quantize_stages(tmp_path):
    import json
    from pathlib import Path

    from lightning_nas.demo import run_demo

    res = run_demo(max_epochs=8, out_dir=tmp_path)  # make demo's default (~20 s here)
    rows = {r["stage"]: r for r in res["rows"]}
    assert {"train", "distill", "prune", "quantize"} <= set(rows)
    assert rows["quantize"]["size_bytes"] < rows["distill"]["size_bytes"]
    assert rows["quantize"]["onnx_latency_ms"] is not None  # the int8 ONNX model ran in ONNX Runtime
    # issue 14: the quantize stage lost points to the pruned model (here, before: 0.967 -> 0.948; now 0.967 ->
    # 0.967); the bound: within 1 point (one test image is 0.37 pt, so this allows two images)
    assert rows["quantize"]["test_acc"] >= rows["prune"]["test_acc"] - 0.01, (rows["prune"], rows["quantize"])
    assert (tmp_path / "model_int8.onnx").stat().st_size > 0
    card = json.loads(Path(res["card"]).read_text())
    stages = [s["stage"] for s in card["stages"]]
    assert stages.index("distill") < stages.index("quantize")
