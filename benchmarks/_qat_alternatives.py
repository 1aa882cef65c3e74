"""How the QAT recipe was chosen: torch.ao's default vs the alternatives, in a plain training loop (no Lightning).

Run: ``python benchmarks/_qat_alternatives.py [--seeds 0]``. Writes ``benchmarks/results/qat_recipe_alternatives.md``.
(Underscore: not part of ``make benchmarks``; about 10 minutes on one core.)

Recipes: ``torch`` = torch.ao's default QAT qconfig (0.01 moving-average ranges, observers frozen after 2 QAT
epochs); ``ema`` = the chosen ``QATRecipe()`` (0.1 moving-average activation ranges, exact weight ranges never
frozen, 20 observe-only warm-up steps, activation ranges frozen for the last epoch); ``lsq`` = learnable scales
and zero-points (LSQ, torch's ``_LearnableFakeQuantize`` with gradient scaling; initialised by the observers over
the 20 warm-up steps, then trained by the same optimizer and learning rate as the weights); ``ema+bn`` = ``ema``
with the folded BatchNorm statistics frozen for the last epoch. Same seed, batches and optimizer per cell; from
the start = 12 QAT epochs; fine-tune = 4 QAT epochs from the float model trained 12 epochs.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.ao.quantization import (  # noqa: E402
    FusedMovingAvgObsFakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
    get_default_qat_qconfig_mapping,
)
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize as LFQ  # noqa: E402

from benchmarks._report import table, write_section  # noqa: E402
from benchmarks.qat_recipe import ResCNN, SmallCNN  # noqa: E402
from lightning_nas.compress import quantize as Q  # noqa: E402
from lightning_nas.data import DigitsDataModule  # noqa: E402
from lightning_nas.models import DigitsCNN  # noqa: E402


def make(name: str) -> nn.Module:
    return {
        "SmallCNN(64)": lambda: SmallCNN(64),
        "DigitsCNN(16)": lambda: DigitsCNN(16),
        "ResCNN(32)": lambda: ResCNN(32),
    }[name]()


def mapping(kind, act_c=0.01):
    base = get_default_qat_qconfig_mapping("x86")
    if kind == "torch":
        return base
    gq = base.global_qconfig
    if kind == "ema":
        act = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=255,
            reduce_range=True,
            averaging_constant=act_c,
        )
        w = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            averaging_constant=1.0,
        )
    elif kind == "lsq":
        act = LFQ.with_args(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=127,
            dtype=torch.quint8,
            use_grad_scaling=True,
            averaging_constant=act_c,
        )
        w = LFQ.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            use_grad_scaling=True,
            channel_len=1,
            averaging_constant=1.0,
        )
    qc = QConfig(activation=act, weight=w)
    m = QConfigMapping().set_global(qc)
    for k, v in base.object_type_qconfigs.items():
        m.set_object_type(k, qc if v == gq else v)
    return m


def prepare(net, kind, act_c=0.01):
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    qm = prepare_qat_fx(net.train(), mapping(kind, act_c), ())
    if kind == "lsq":
        for mod in qm.modules():
            f = getattr(mod, "weight_fake_quant", None)
            if isinstance(f, LFQ):
                c = mod.weight.shape[0]
                f.scale = torch.nn.Parameter(torch.ones(c))
                f.zero_point = torch.nn.Parameter(torch.zeros(c))
        return qm
    return Q._init_weight_qparams(qm)


def evaluate(m, x, y):
    m.eval()
    with torch.no_grad():
        return (m(x).argmax(1) == y).float().mean().item()


def schedule(qm, r, qe, step_in_qat, training=True):
    """qe: QAT epoch (negative: float warm-up); step_in_qat: QAT steps done."""
    active = qe >= 0
    warm = step_in_qat < r["warm_steps"]
    Q.set_fake_quant(qm, active and not warm)
    frozen = r["freeze_act"] is not None and qe >= r["freeze_act"]
    for n, f in Q.fake_quant_modules(qm):
        isw = n.endswith("weight_fake_quant")
        obs = active and training and (not frozen or (isw and not r["freeze_w"]))
        if isinstance(f, LFQ):
            learn = active and not warm and step_in_qat > 0
            f.toggle_qparam_learning(learn and training)
            f.toggle_observer_update(obs and not learn)
            f.toggle_fake_quant(active and not warm)
        else:
            f.enable_observer(obs)
    Q.set_bn_frozen(qm, r["freeze_bn"] is not None and qe >= r["freeze_bn"])


def run(model, opt, mode, recipe, seed=0, epochs=12, ft_epochs=4, verbose=False):
    r = dict(kind="torch", act_c=0.01, start=0, freeze_act=2, freeze_w=True, freeze_bn=None, warm_steps=0)
    r.update(recipe)
    dm = DigitsDataModule(batch_size=64, seed=0)
    x, y = dm.split("train").tensors
    xv, yv = dm.split("val").tensors
    xt, yt = dm.split("test").tensors

    def mkopt(params):
        return {
            "adam2": lambda: torch.optim.Adam(params, 1e-2),
            "adam3": lambda: torch.optim.Adam(params, 1e-3),
            "sgd": lambda: torch.optim.SGD(params, 0.1, momentum=0.9),
        }[opt]()

    g = torch.Generator()

    def epoch_loop(m, o, hook=None):
        m.train()
        perm = torch.randperm(len(x), generator=g)
        tot = torch.zeros(())
        n = 0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            if hook:
                hook()
            loss = F.cross_entropy(m(x[idx]), y[idx])
            o.zero_grad()
            loss.backward()
            o.step()
            tot += loss.detach()
            n += 1
        return (tot / n).item()

    torch.manual_seed(seed)
    g.manual_seed(seed)
    fnet = make(model)
    fo = mkopt(fnet.parameters())
    fh = []
    for _ in range(epochs):
        fh.append(round(epoch_loop(fnet, fo), 3))
    float_acc = evaluate(fnet, xt, yt)
    if mode == "ft":
        net, total = copy.deepcopy(fnet), ft_epochs
    else:
        torch.manual_seed(seed)
        g.manual_seed(seed)
        net, total = make(model), epochs
    qm = prepare(net, r["kind"], r["act_c"])
    o = mkopt(list(qm.parameters()))
    for k in ("freeze_act", "freeze_bn"):
        if r[k] == "late":
            r[k] = max(1, total - 1 - r["start"])
    steps = [0]
    hist = []
    for e in range(total):
        qe = e - r["start"]

        def hook(qe: int = qe) -> None:
            schedule(qm, r, qe, steps[0])
            steps[0] += qe >= 0

        loss = epoch_loop(qm, o, hook)
        schedule(qm, r, qe, steps[0], training=False)
        hist.append((round(loss, 3), round(evaluate(qm, xv, yv), 3)))
        if verbose:
            print(e, hist[-1], flush=True)
    schedule(qm, r, total, steps[0], training=False)
    Q.set_fake_quant(qm, True)
    int8_acc = evaluate(Q.convert_int8(qm), xt, yt)
    return dict(
        float=round(float_acc, 4),
        int8=round(int8_acc, 4),
        drop=round(100 * (float_acc - int8_acc), 2),
        hist=hist,
        fhist=fh,
    )


RECIPES = {
    "torch": {},
    "ema": {"kind": "ema", "act_c": 0.1, "warm_steps": 20, "freeze_act": "late", "freeze_w": False},
    "lsq": {"kind": "lsq", "warm_steps": 20, "freeze_act": None},
    "ema+bn": {
        "kind": "ema",
        "act_c": 0.1,
        "warm_steps": 20,
        "freeze_act": "late",
        "freeze_w": False,
        "freeze_bn": "late",
    },
}
OPTS = {"adam2": "Adam 1e-2", "adam3": "Adam 1e-3", "sgd": "SGD 0.1 m0.9"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--opts", default="adam2,sgd")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for model, opt, mode in itertools.product(
        ["SmallCNN(64)", "DigitsCNN(16)", "ResCNN(32)"], args.opts.split(","), ["scratch", "ft"]
    ):
        res = {name: [run(model, opt, mode, r, s) for s in seeds] for name, r in RECIPES.items()}
        fl = sum(r["float"] for r in res["torch"]) / len(seeds)
        int8 = [sum(r["int8"] for r in v) / len(seeds) for v in res.values()]
        cells = [f"{100 * q:.2f} ({100 * (fl - q):+.1f})" for q in int8]
        rows.append(
            [model, OPTS[opt], "from the start" if mode == "scratch" else "fine-tune", f"{100 * fl:.2f}", *cells]
        )
        print(rows[-1], flush=True)
    body = (
        "Plain training loop, seed(s) "
        + args.seeds
        + "; int8 test accuracy % (drop pt vs float). "
        + __doc__.split("Recipes: ", 1)[1].strip()
        + "\n\n"
        + table(["model", "optimizer", "QAT", "float %", *(f"int8 `{k}`" for k in RECIPES)], rows)
    )
    path = write_section("qat_recipe_alternatives", "QAT recipe: how it was chosen (alternatives)", body, args)
    print(path.read_text())


if __name__ == "__main__":
    main()
