"""QAT flows side by side: torch.ao FX (what ``compress.quantize`` uses) vs torchao's PT2E (``prepare_qat_pt2e`` with
the X86 Inductor quantizer and with the XNNPACK quantizer): int8 accuracy, int8 latency in eager torch, under
``torch.compile`` (Inductor) and in ONNX Runtime, whether the int8 model exports to ONNX, and the time to prepare.

Run: ``python benchmarks/qat_pt2e.py``. Needs ``torchao`` (not a dependency of lightning_nas; ``pip install
torchao``); the ONNX export of a PT2E model needs ``onnxscript`` too (torch's dynamo exporter), reported as such
when missing. Writes ``benchmarks/results/qat_pt2e.md``.

Same model (``SmallCNN(64)`` from ``qat_recipe.py``), data, seed, batches and optimizer in every flow, in a plain
training loop: a fine-tune (float 12 epochs at Adam 1e-3, then 4 QAT epochs at Adam 1e-3) and a fit from the start
(12 QAT epochs at Adam 1e-2). FX runs the default ``QATRecipe`` (``apply_qat_schedule``); PT2E runs its quantizer's
own QAT config. Latency: median ms, batch 64, one thread, measured side by side in one process.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._report import table, write_section  # noqa: E402
from benchmarks.qat_recipe import SmallCNN  # noqa: E402
from lightning_nas.compress import quantize as Q  # noqa: E402
from lightning_nas.data import DigitsDataModule  # noqa: E402
from lightning_nas.deploy.export import onnx_bytes, onnx_session  # noqa: E402
from lightning_nas.deploy.measure import time_call  # noqa: E402


def _loop(model, opt, x, y, epochs, seed, before_step=lambda: None, train=lambda m: m.train()):
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        train(model)
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            before_step()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _ms(fn) -> float:
    with torch.no_grad():
        return time_call(fn, 50, 5)[0]


def qat(flow: str, net, x, y, epochs: int, lr: float, seed: int):
    """Train ``net`` with QAT in ``flow``; returns (int8 model, prepare seconds, train seconds)."""
    t0 = time.perf_counter()
    if flow == "FX":
        model = Q.prepare_qat(copy.deepcopy(net).train())
        recipe, steps = Q.QATRecipe(), [0]

        def before_step():
            Q.apply_qat_schedule(model, recipe, active=True, qat_steps=steps[0])
            steps[0] += 1

        train = lambda m: m.train()  # noqa: E731
    else:
        from torchao.quantization.pt2e import move_exported_model_to_train
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        if flow == "PT2E X86":
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )

            quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
        else:
            from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
            )
        batch = torch.export.Dim("batch", min=1, max=4096)
        exported = torch.export.export(copy.deepcopy(net).train(), (x[:64],), dynamic_shapes=({0: batch},)).module()
        model = prepare_qat_pt2e(exported, quantizer)
        before_step, train = (lambda: None), move_exported_model_to_train
    t1 = time.perf_counter()
    torch.manual_seed(seed)
    _loop(model, torch.optim.Adam(model.parameters(), lr), x, y, epochs, seed, before_step, train)
    t2 = time.perf_counter()
    if flow == "FX":
        Q.set_observers(model, False)
        int8 = Q.convert_int8(model)
    else:
        from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        move_exported_model_to_eval(model)
        int8 = convert_pt2e(model)
        allow_exported_model_train_eval(int8)
    return int8, t1 - t0, t2 - t1


def onnx_of(flow: str, int8, x) -> tuple[bytes | None, str]:
    if flow == "FX":
        return Q.export_int8_onnx(int8, (x[:1],), form="fused"), "TorchScript exporter (export_int8_onnx)"
    try:
        return onnx_bytes(int8, (x[:1],)), "TorchScript exporter"
    except Exception as exc:
        import re

        op = re.search(r"(\w+::\w+)", str(exc))
        ts_error = f"the TorchScript exporter fails ({op.group(1) if op else type(exc).__name__} unknown)"
    try:
        prog = torch.onnx.export(
            int8, (x[:64],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False
        )
        return prog.model_proto.SerializeToString(), f"dynamo exporter (onnxscript); {ts_error}"
    except Exception as exc:
        return None, f"no: {ts_error}; dynamo exporter: {type(exc).__name__}: {str(exc)[:90]}"


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --quick is refused
    try:
        import torchao  # noqa: F401
    except ImportError:  # not a dependency: `make benchmarks` keeps the section measured where it was installed
        print("qat_pt2e.py: skipped, needs torchao (pip install torchao); benchmarks/results/qat_pt2e.md unchanged")
        return
    torch.set_num_threads(1)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # Inductor's int8 conv/linear fusions need frozen weights
    t_start = time.perf_counter()
    dm = DigitsDataModule(batch_size=64, seed=0)
    x, y = dm.split("train").tensors
    xt, yt = dm.split("test").tensors
    xb = xt[:64]
    torch.manual_seed(0)
    trained = SmallCNN(64)
    _loop(trained, torch.optim.Adam(trained.parameters(), 1e-3), x, y, 12, 0)
    trained.eval()
    float_acc = _acc(trained, xt, yt)
    fp32_compiled = torch.compile(copy.deepcopy(trained))
    with torch.no_grad():
        fp32_compiled(xb)
    fp32_ort = onnx_session(onnx_bytes(trained, (xb[:1],)), threads=1)
    feed = {fp32_ort.get_inputs()[0].name: xb.numpy()}
    timed = {
        "fp32 (no QAT)": {
            "eager": lambda: trained(xb),
            "inductor": lambda: fp32_compiled(xb),
            "ort": lambda: fp32_ort.run(None, feed),
        }
    }
    info = {"fp32 (no QAT)": [f"{100 * float_acc:.2f}", "", "", ""]}
    for flow in ("FX", "PT2E X86", "PT2E XNNPACK"):
        int8, t_prep, t_train = qat(flow, trained, x, y, 4, 1e-3, 0)
        acc_ft = _acc(int8, xt, yt)
        torch.manual_seed(0)
        scratch, _, _ = qat(flow, SmallCNN(64), x, y, 12, 1e-2, 0)
        acc_scratch = _acc(scratch, xt, yt)
        fns = {"eager": (lambda m: lambda: m(xb))(int8)}
        try:
            compiled = torch.compile(int8)
            with torch.no_grad():
                compiled(xb)
            fns["inductor"] = (lambda c: lambda: c(xb))(compiled)
        except Exception as exc:
            fns["inductor"] = f"fails: {type(exc).__name__}"
        data, how = onnx_of(flow, int8, xb)
        if data is not None:
            sess = onnx_session(data, threads=1)
            name = sess.get_inputs()[0].name
            fns["ort"] = (lambda se, n: lambda: se.run(None, {n: xb.numpy()}))(sess, name)
            ops = sorted({o for o in Q.int8_onnx_ops(data) if o.startswith("Q") and o != "QuantizeLinear"})
            onnx_acc = float((sess.run(None, {name: xt.numpy()})[0].argmax(1) == yt.numpy()).mean())
            how = f"yes, {how}; ORT runs {', '.join(ops)}; ORT accuracy {100 * onnx_acc:.2f}"
        else:
            fns["ort"] = "no ONNX"
        timed[flow] = fns
        info[flow] = [f"{100 * acc_ft:.2f}", f"{100 * acc_scratch:.2f}", f"{t_prep:.1f} / {t_train:.1f}", how]
        print(flow, info[flow], flush=True)
    ms: dict[str, dict[str, list[float]]] = {f: {k: [] for k in fns} for f, fns in timed.items()}
    for _ in range(5):  # interleaved rounds: every flow and runtime measured side by side, median of the rounds
        for flow, fns in timed.items():
            for kind, fn in fns.items():
                if callable(fn):
                    ms[flow][kind].append(_ms(fn))

    def med(flow: str, kind: str) -> str:
        return f"{statistics.median(ms[flow][kind]):.2f}" if ms[flow][kind] else timed[flow][kind]

    rows = []
    for flow in timed:
        acc_ft, acc_scratch, prep, how = info[flow]
        ort = med(flow, "ort")
        speed = (
            ""
            if flow.startswith("fp32") or not ms[flow]["ort"]
            else f"{statistics.median(ms['fp32 (no QAT)']['ort']) / statistics.median(ms[flow]['ort']):.2f}x"
        )
        rows.append([flow, acc_ft, acc_scratch, prep, med(flow, "eager"), med(flow, "inductor"), ort, how, speed])
    body = [
        "Same SmallCNN(64), digits, seed and batches in every flow (plain training loop). Fine-tune: float 12 "
        "epochs at Adam 1e-3, then 4 QAT epochs at Adam 1e-3; from the start: 12 QAT epochs at Adam 1e-2 (float: "
        f"{100 * float_acc:.2f}% for the fine-tune's float model). FX runs the default `QATRecipe`; PT2E its "
        "quantizer's QAT config. Latency: median ms, batch 64, 1 thread, 5 interleaved rounds; "
        "Inductor = `torch.compile` with "
        "`freezing=True`; ORT = ONNX Runtime on the exported int8 file. Test split, 270 images.",
        "",
        table(
            [
                "flow",
                "int8 acc % fine-tune",
                "int8 acc % from the start (Adam 1e-2)",
                "prepare / train s (fine-tune)",
                "eager ms",
                "Inductor ms",
                "ORT ms",
                "ONNX export",
                "ORT speed-up vs fp32",
            ],
            rows,
        ),
        "",
        "Decision: keep FX. Accuracy: equal as a fine-tune; from the start at Adam 1e-2, FX with `QATRecipe` "
        f"{rows[1][2]}% vs PT2E {rows[2][2]}% (X86) / {rows[3][2]}% (XNNPACK) with their own QAT configs. Speed: "
        "PT2E's converted model is a reference graph (dequantize -> fp32 op -> quantize): in eager torch "
        f"{rows[2][4]} / {rows[3][4]} ms against fp32's {rows[0][4]} ms and FX int8's {rows[1][4]} ms; only "
        f"`torch.compile` (a C++ compiler at run time, a compile per input shape) brings X86 to {rows[2][5]} ms. "
        "ONNX: PT2E exports only through the dynamo exporter (onnxscript, not a dependency); in ONNX Runtime "
        f"{rows[2][6]} / {rows[3][6]} ms vs FX's {rows[1][6]} ms. Preparing: {rows[2][3].split(' /')[0]} / "
        f"{rows[3][3].split(' /')[0]} s (`torch.export` + `prepare_qat_pt2e`) vs FX's {rows[1][3].split(' /')[0]} s. "
        "Revisit when torch removes `torch.ao.quantization` (it warns that it is deprecated) or when PT2E's "
        "int8 model runs fast in eager torch.",
        "",
        f"Run time {time.perf_counter() - t_start:.0f} s.",
    ]
    path = write_section("qat_pt2e", "QAT flows: torch.ao FX vs torchao PT2E", "\n".join(body), args)
    print(path.read_text())


if __name__ == "__main__":
    main()
