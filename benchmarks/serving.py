"""Serving on loopback: float vs int8 ONNX Runtime behind `lightning-nas serve`, and drift-check error rates.

A digits CNN is trained briefly, bundled (float + int8 QDQ, calibrated on the training split) and served by
`python -m lightning_nas serve` in a subprocess on a free 127.0.0.1 port. A second process sends a bounded
number of sequential requests over one keep-alive connection and records each request's wall time.
Then the drift check is run on 200-image windows: fresh clean digits (false alarms) and brightened/rotated
digits (detections), over several resamples.

Run: ``python benchmarks/serving.py`` (about 1-2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import table, write_section

from lightning_nas.data import DigitsDataModule
from lightning_nas.deploy import ReferenceProfile, bundle, check_drift
from lightning_nas.deploy.profile import attribution_share
from lightning_nas.models import DigitsCNN, train_plain

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = {1: 200, 32: 100}  # batch size -> requests per client run
ROUNDS = 3  # client runs per server and batch size, float and int8 alternating
SEEDS = 20

_CLIENT = r"""
import json, sys, time, httpx, numpy as np
url, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.load(sys.argv[4])
bodies = [json.dumps({"inputs": x[(i * batch) % (len(x) - batch):][:batch].tolist()}).encode() for i in range(n)]
times, failed = [], 0
with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as c:
    for b in bodies[:20]:
        c.post("/predict", content=b)  # warm-up, not timed
    t_all = time.perf_counter()
    for b in bodies:
        t0 = time.perf_counter()
        try:
            ok = c.post("/predict", content=b).status_code == 200
        except httpx.HTTPError:
            ok = False
        times.append((time.perf_counter() - t0) * 1e3)
        failed += not ok
    total = time.perf_counter() - t_all
print(json.dumps({"times_ms": times, "failed": failed, "total_s": total}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(dm: DigitsDataModule, epochs: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    net = DigitsCNN(16)
    return train_plain(net, *dm.split("train").tensors, epochs=epochs)


def _start(bundle_dir: Path, int8: bool, env: dict) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "lightning_nas",
        "serve",
        str(bundle_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        "64",
        *(["--int8"] if int8 else []),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server {' '.join(cmd)} did not start")


def _serve_and_load(bundle_dir: Path, data_path: Path) -> list[list]:
    """Both servers up at once; client runs alternate float/int8 for ROUNDS rounds (shared noise, no drift bias)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    servers = {}
    try:
        for name in ("float", "int8"):
            servers[name] = _start(bundle_dir, name == "int8", env)
        rows = []
        for batch, n in REQUESTS.items():
            acc = {name: {"times": [], "failed": 0, "total": 0.0} for name in servers}
            for _ in range(ROUNDS):
                for name, (_, url) in servers.items():
                    out = subprocess.run(
                        [sys.executable, "-c", _CLIENT, url, str(batch), str(n), str(data_path)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    r = json.loads(out.stdout)
                    acc[name]["times"] += r["times_ms"]
                    acc[name]["failed"] += r["failed"]
                    acc[name]["total"] += r["total_s"]
            for name, a in acc.items():
                t, total_n = np.array(a["times"]), n * ROUNDS
                rows.append(
                    [
                        name,
                        batch,
                        total_n,
                        a["failed"],
                        total_n / a["total"],
                        total_n * batch / a["total"],
                        float(np.percentile(t, 50)),
                        float(np.percentile(t, 99)),
                        _model_ms(bundle_dir, name == "int8", np.load(data_path)[:batch]),
                    ]
                )
        return rows
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)


def _model_ms(bundle_dir: Path, int8: bool, x: np.ndarray) -> float:
    """Median ONNX Runtime time of the model alone on this batch (1 thread, in this process)."""
    from lightning_nas.deploy import load_bundle
    from lightning_nas.deploy.measure import time_call

    sess = load_bundle(bundle_dir).session(int8=int8, threads=1)
    feeds = {sess.get_inputs()[0].name: x}
    return time_call(lambda: sess.run(None, feeds), 200, 20)[0]


def _drift_rates(net: torch.nn.Module, dm: DigitsDataModule) -> list[list]:
    from scipy import ndimage

    profile = ReferenceProfile.from_data(net, dm.split("train").tensors[0])
    pool = torch.cat([dm.split("val").tensors[0], dm.split("test").tensors[0]]).numpy()
    shifts = {
        "clean (fresh split)": lambda x: x,
        "brightness +0.1": lambda x: np.clip(x + 0.1, 0, 1),
        "brightness x0.8": lambda x: x * 0.8,
        "rotated 10 deg": lambda x: np.clip(ndimage.rotate(x, 10, axes=(2, 3), reshape=False, order=1), 0, 1),
        "rotated 20 deg": lambda x: np.clip(ndimage.rotate(x, 20, axes=(2, 3), reshape=False, order=1), 0, 1),
    }
    rows = []
    for name, f in shifts.items():
        flagged, psi_max, n_feat, steps = 0, [], [], {}
        for seed in range(SEEDS):
            x = f(pool[np.random.default_rng(seed).choice(len(pool), 200, replace=False)]).astype(np.float32)
            with torch.no_grad():
                classes = net(torch.from_numpy(x)).argmax(1).numpy()
            rep = check_drift(profile, x, classes, attribution_share(net, x[:64], profile.feature_mode))
            flagged += rep.drifted
            psi_max.append(rep.psi_max)
            n_feat.append(len(rep.drifted_features))
            steps[rep.next_step] = steps.get(rep.next_step, 0) + 1
        rows.append(
            [
                name,
                f"{flagged}/{SEEDS}",
                float(np.median(psi_max)),
                float(np.median(n_feat)),
                ", ".join(f"{k} {v}" for k, v in sorted(steps.items())),
            ]
        )
    return rows


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --quick is refused
    torch.set_num_threads(1)
    dm = DigitsDataModule(seed=0)
    net = _train(dm)
    x_test, y_test = dm.split("test").tensors
    with torch.no_grad():
        acc = float((net(x_test).argmax(1) == y_test).float().mean())
    with tempfile.TemporaryDirectory() as d:
        out = bundle(
            net,
            dm.example_input(32),
            Path(d) / "bundle",
            int8=True,
            metrics={"test_acc": acc},
            reference_data=dm.split("train").tensors[0],
        )
        card = json.loads((out / "card.json").read_text())
        data_path = Path(d) / "x.npy"
        np.save(data_path, x_test.numpy())
        rows = _serve_and_load(out, data_path)
        sizes = card["measurements"]["file_bytes"]
        agree = card["bundle"]["checks"]["model.int8.onnx"]["top1_agreement"]
    drift_rows = _drift_rates(net, dm)
    body = f"""A DigitsCNN(16) (test accuracy {acc:.3f}) bundled with `lightning_nas.deploy.bundle(..., int8=True)`:
model.onnx {sizes["model.onnx"]:,} B, model.int8.onnx {sizes["model.int8.onnx"]:,} B (int8 top-1 agreement with
float on 128 calibration-split images: {agree:.3f}). Server: `lightning-nas serve` (uvicorn, one worker, ONNX
Runtime with 1 intra-op thread) on 127.0.0.1, float and int8 servers up side by side; client: a separate process,
sequential requests over one keep-alive connection, JSON bodies prepared in advance, 20 untimed warm-up
requests; {ROUNDS} client runs per row, alternating float and int8, pooled. Latency is the client-side wall time of
one request (HTTP + JSON + validation + inference); the last column times the ONNX Runtime session alone on
the same batch. This model runs in well under a millisecond, so the HTTP/JSON path dominates the request time
and float vs int8 differ little end to end.

{
        table(
            [
                "model",
                "batch",
                "requests",
                "failed",
                "requests/s",
                "samples/s",
                "p50 ms",
                "p99 ms",
                "model alone ms (ORT)",
            ],
            rows,
        )
    }

Drift check (`deploy.check_drift`, default thresholds) on windows of 200 digits the profile never saw
(validation + test splits; the profile is built on the training split), {SEEDS} random windows per row. A window is
flagged when any drift (input, prediction or attribution) is declared; "clean" rows are false alarms.

{table(["data", "flagged", "median psi_max", "median drifted features", "next step"], drift_rows)}
"""
    path = write_section("serving", "Serving (HTTP on ONNX Runtime) and drift detection", body, args)
    print(path.read_text())


if __name__ == "__main__":
    main()
