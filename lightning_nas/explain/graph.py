"""Architecture view: a layer table (name, type, in/out shape, params, MACs) and a rendered graph image.

Pure torch + matplotlib (no graphviz). Shapes come from forward hooks on one real forward pass, MACs from
``torch.utils.flop_counter`` per module (MACs = FLOPs / 2). Edges come from ``torch.fx`` when the model
traces symbolically (so skip connections and branches show), else layers are chained in execution order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas.explain._attribution_utils import forward_of

__all__ = ["LayerRow", "layer_table", "graph_edges", "render_graph", "TABLE_COLUMNS"]

TABLE_COLUMNS = ["name", "type", "in_shape", "out_shape", "params", "macs", "calls"]


@dataclass
class LayerRow:
    name: str
    type: str
    in_shape: str
    out_shape: str
    params: int
    macs: int
    calls: int = 1

    def as_list(self) -> list[Any]:
        return [self.name, self.type, self.in_shape, self.out_shape, self.params, self.macs, self.calls]


def _shape(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return "x".join(map(str, v.shape))
    if isinstance(v, (tuple, list)):
        shapes = [_shape(t) for t in v if isinstance(t, torch.Tensor)]
        return ", ".join(shapes) if shapes else "-"
    return "-"


def _is_row_module(mod: nn.Module) -> bool:
    """Leaves, and containers that hold parameters of their own (e.g. MultiheadAttention)."""
    return not any(True for _ in mod.children()) or any(True for _ in mod.parameters(recurse=False))


def layer_table(
    model: nn.Module, example_input: Any, forward_fn: Callable[[nn.Module, Any], Any] | None = None
) -> list[LayerRow]:
    """One row per leaf module in execution order, from one forward pass of ``example_input`` (eval mode,
    restored after). A module called several times is one row with its first call's shapes.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.graph import layer_table
        >>> from lightning_nas.models import DigitsCNN
        >>> rows = layer_table(DigitsCNN(width=4), torch.rand(1, 1, 8, 8))
        >>> [(r.name, r.type, r.out_shape, r.params) for r in rows[:2]]
        [('features.0', 'Conv2d', '1x4x8x8', 40), ('features.1', 'BatchNorm2d', '1x4x8x8', 8)]
        >>> rows[-1].name, rows[-1].macs  # the logits layer: 8 x 10 multiply-adds
        ('classifier', 80)
    """
    from torch.utils.flop_counter import FlopCounterMode

    fwd = forward_of(model, forward_fn)
    rows: dict[str, LayerRow] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name or not _is_row_module(mod):
            continue

        def hook(m: nn.Module, inp: Any, out: Any, name: str = name) -> None:
            if name in rows:
                rows[name].calls += 1
                return
            own = sum(p.numel() for p in m.parameters(recurse=not any(True for _ in m.children())))
            rows[name] = LayerRow(name, type(m).__name__, _shape(inp), _shape(out), own, 0)

        handles.append(mod.register_forward_hook(hook))
    with eval_mode(model):
        try:
            # grad stays on: under no_grad PyTorch's fused fast path for nn.TransformerEncoderLayer hides its matmuls
            # from the flop counter
            with torch.enable_grad(), FlopCounterMode(display=False) as fc:
                fwd(example_input)
        finally:
            for h in handles:
                h.remove()
    for fqn, ops in fc.get_flop_counts().items():
        # names are rooted at the outermost module the forward called (``model``, or a submodule of it when
        # ``forward_fn`` calls one): match the rest of the name to a row, as is or as the tail of a longer name
        row: str | None = fqn.partition(".")[2]
        if row not in rows:
            longer = [n for n in rows if n.endswith("." + row)] if row else []
            row = longer[0] if len(longer) == 1 else None
        if row is not None:
            rows[row].macs = int(sum(ops.values())) // 2
    return list(rows.values())


def graph_edges(model: nn.Module, names: list[str]) -> list[tuple[str, str]]:
    """Edges between the named modules from a ``torch.fx`` trace; a chain in ``names`` order when the model
    does not trace (data-dependent control flow, several inputs, ...).

    Examples:
        >>> from lightning_nas.explain.graph import graph_edges
        >>> from lightning_nas.models import DigitsCNN
        >>> graph_edges(DigitsCNN(width=4), ["features.0", "features.3", "classifier"])
        [('features.0', 'features.3'), ('features.3', 'classifier')]
    """
    chain = list(zip(names, names[1:]))
    try:
        gm = torch.fx.symbolic_trace(model, concrete_args=None)
    except Exception:
        return chain
    wanted = set(names)
    producers: dict[Any, set[str]] = {}
    edges: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        srcs: set[str] = set()
        for arg in node.all_input_nodes:
            srcs |= producers.get(arg, set())
        target = str(node.target) if node.op == "call_module" else None
        if target in wanted:
            edges += [(s, target) for s in sorted(srcs) if (s, target) not in edges]
            producers[node] = {target}
        else:
            producers[node] = srcs
    return edges if edges else chain


def render_graph(
    rows: list[LayerRow], edges: list[tuple[str, str]] | None = None, title: str = "", max_nodes: int = 60
) -> Any:
    """A matplotlib figure: one box per layer (name, type, output shape, params) in execution order, columns
    of at most 15, arrows for ``edges`` (default: the execution-order chain).

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.graph import layer_table, render_graph
        >>> from lightning_nas.models import DigitsCNN
        >>> figure = render_graph(layer_table(DigitsCNN(width=4), torch.rand(1, 1, 8, 8)), title="DigitsCNN")
        >>> type(figure).__name__
        'Figure'
        >>> import matplotlib.pyplot as plt
        >>> plt.close(figure)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    shown = rows[:max_nodes]
    per_col = 15
    ncols = max(1, -(-len(shown) // per_col))
    fig, ax = plt.subplots(figsize=(3.4 * ncols + 0.6, 0.62 * min(per_col, max(len(shown), 1)) + 1.0), dpi=90)
    pos: dict[str, tuple[float, float]] = {}
    for i, r in enumerate(shown):
        cx, cy = (i // per_col) * 3.4 + 1.6, -(i % per_col) * 0.62
        pos[r.name] = (cx, cy)
        colour = {
            "Conv": "#cfe2f3",
            "Linear": "#d9ead3",
            "BatchNorm": "#fff2cc",
            "ReLU": "#f4cccc",
            "Embedding": "#ead1dc",
        }
        fc = next((c for k, c in colour.items() if r.type.startswith(k) or k in r.type), "#eeeeee")
        ax.add_patch(FancyBboxPatch((cx - 1.45, cy - 0.24), 2.9, 0.48, boxstyle="round,pad=0.02", fc=fc, ec="#555"))
        label = f"{r.name}  [{r.type}]\n{r.out_shape}  ·  {r.params:,} params"
        ax.text(cx, cy, label, ha="center", va="center", fontsize=6.5, family="monospace")
    for a, b in edges if edges is not None else [(r.name, s.name) for r, s in zip(shown, shown[1:])]:
        if a in pos and b in pos:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            ax.annotate(
                "",
                xy=(x1, y1 + 0.25),
                xytext=(x0, y0 - 0.25),
                arrowprops=dict(
                    arrowstyle="->",
                    color="#333",
                    lw=0.8,
                    connectionstyle="arc3,rad=0.0" if x0 == x1 and y0 - y1 < 0.7 else "arc3,rad=-0.25",
                ),
            )
    if len(rows) > max_nodes:
        ax.text(0.1, -per_col * 0.62, f"... {len(rows) - max_nodes} more layers", fontsize=7)
    ax.set_xlim(0, 3.4 * ncols)
    ax.set_ylim(-0.62 * min(per_col, max(len(shown), 1)), 0.5)
    ax.axis("off")
    total_p = sum(r.params for r in rows)
    total_m = sum(r.macs for r in rows)
    ax.set_title(f"{title}  ({len(rows)} layers, {total_p:,} params, {total_m:,} MACs)".strip(), fontsize=8)
    fig.tight_layout()
    return fig
