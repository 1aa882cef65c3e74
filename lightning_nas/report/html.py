"""Render a ``RunData`` as one self-contained HTML page: matplotlib plots and images as base64 PNGs, tables as
HTML, one section per concern the run has (search, compression, distillation, attributions, ...).

Every value that comes from the run (keys, steps, table cells, captions, titles, config) is HTML-escaped;
matplotlib draws text literally (no mathtext, so a ``$`` in a key is just a character); a plot or image that
cannot be drawn is skipped and listed in a "Not shown" section instead of stopping the page."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_nas._trust import image_type
from lightning_nas.report.load import RunData, load_run

# (section id, title, predicate on a logged key); the first match wins, order matters
SECTIONS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("search", "Architecture search", lambda k: k.startswith(("nas/", "search/", "hpo/"))),
    ("compression", "Compression", lambda k: k.startswith(("prune/", "quant/", "lowrank/", "explain/sensitivity"))),
    ("distillation", "Distillation", lambda k: k.startswith(("distill/", "explain/agreement"))),
    ("attribution", "Attributions", lambda k: k.startswith("explain/attribution")),
    ("paths", "Decision paths", lambda k: k.startswith("explain/paths")),
    ("architecture", "Architecture", lambda k: k.startswith("explain/architecture")),
    ("dynamics", "Training dynamics", lambda k: k.startswith("dynamics/")),
    ("explain", "Other explanations", lambda k: k.startswith("explain/")),
    ("training", "Training metrics", lambda k: True),
]
_MAX_LINES, _MAX_PLOTS, _MAX_ROWS, _MAX_HIST, _MAX_SKIPPED = 16, 24, 200, 12, 100
# a token-attribution table (``explain._attribution_utils.TOKEN_COLUMNS``) is drawn as highlighted text
_TOKEN_COLUMNS = ["sample", "label", "pred", "position", "token", "attribution"]
_MAX_TOKEN_SAMPLES, _MAX_TOKENS = 60, 64

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#3f51b5;color:#fff;padding:18px 28px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}nav{padding:8px 28px;background:#e8eaf6;font-size:14px}
nav a{margin-right:14px;color:#283593}main{padding:8px 28px}section{background:#fff;border:1px solid #ddd;
border-radius:6px;margin:16px 0;padding:8px 18px}h2{color:#283593}h3{font-size:15px;margin:14px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#eee}.scroll{max-height:360px;overflow:auto;display:inline-block}
img.media{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}
p.toks{line-height:1.9;margin:3px 0;font-size:14px}p.toks small{color:#555;margin-right:6px}
span.tok{padding:1px 3px;border-radius:3px;margin-right:1px}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img_tag(b64: str, alt: str, cls: str = "", kind: str = "png") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/{kind};base64,{b64}">'


def _figure(inner: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{inner}{cap}</figure>"


def _group_scalars(section: str, keys: list[str]) -> dict[str, list[str]]:
    """Keys sharing a pattern go into one plot: ``nas/<label>/*`` per choice, ``a/*/metric`` per metric
    across layers, ``.../drift_*`` and ``.../aopc*`` together; anything else alone."""
    groups: dict[str, list[str]] = {}
    for k in sorted(keys):
        parts = k.split("/")
        if section == "search" and len(parts) >= 3:
            g = "/".join(parts[:-1]) + "/*"
        elif section in ("attribution", "paths", "architecture"):
            g = re.sub(r"(drift|aopc)_?\w*$", r"\1*", k)
        elif len(parts) >= 3:
            g = f"{parts[0]}/*/{parts[-1]}"
        else:
            g = k
        groups.setdefault(g, []).append(k)
    return groups


def _plot_lines(data: RunData, title: str, keys: list[str]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 2.9))
    for k in keys[:_MAX_LINES]:
        pts = sorted(p for p in data.scalars[k] if math.isfinite(p[1]))  # inf/NaN cannot be drawn
        label = (
            k
            if len(keys) == 1
            else (k.split("/")[-1] if title.endswith("*") else k.split("/")[-2] if len(k.split("/")) >= 3 else k)
        )
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, lw=1.2, label=label
        )
    ax.set_xlabel("step")
    ax.set_title(title + ("" if len(keys) <= _MAX_LINES else f" (first {_MAX_LINES} of {len(keys)})"), fontsize=9)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend(fontsize=6, ncol=2 if len(keys) > 6 else 1)
    return _figure(_img_tag(_png(fig), title))


def _plot_series(key: str, s: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 2.9))
    for name, ys in list(s.get("ys", {}).items())[:_MAX_LINES]:
        ax.plot(s.get("xs", []), ys, marker="o", ms=3, lw=1.2, label=name)
    ax.set_xlabel(s.get("xname", "x"))
    ax.set_title(s.get("title", key), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure(_img_tag(_png(fig), key), f"{key} (step {s.get('step', '-')})")


def _plot_hist(key: str, recs: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    shown = [recs[0], recs[-1]] if len(recs) > 1 else recs
    for r, alpha in zip(shown, (0.45, 0.8)):
        edges = np.asarray(r["edges"], dtype=float)
        ax.stairs(np.asarray(r["counts"], dtype=float), edges, fill=True, alpha=alpha, label=f"step {r['step']}")
    ax.set_title(key, fontsize=9)
    ax.legend(fontsize=7)
    return _figure(_img_tag(_png(fig), key), f"{key}: first and last of {len(recs)} histograms")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape("" if v is None else str(v))


def _table(key: str, t: dict[str, Any]) -> str:
    rows = t.get("rows", [])
    head = "".join(f"<th>{_cell(c)}</th>" for c in t.get("columns", []))
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows[:_MAX_ROWS])
    more = f"<p>... {len(rows) - _MAX_ROWS} more rows</p>" if len(rows) > _MAX_ROWS else ""
    return (
        f"<h3>{html.escape(key)} <small>(step {_cell(t.get('step', '-'))}, {len(rows)} rows)</small></h3>"
        f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{more}'
    )


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def _token_text(key: str, t: dict[str, Any]) -> str:
    """A token-attribution table as sentences: each token's background is red for evidence for the explained
    class, blue against it, its opacity ``|a| / max |a|`` of the sentence; the value shows on hover. Only
    numbers reach the style attribute; words, labels and keys are escaped."""
    samples: dict[str, list[Any]] = {}
    for r in t.get("rows", []):
        if not isinstance(r, (list, tuple)) or len(r) != len(_TOKEN_COLUMNS):
            continue
        s, label, pred, pos, tok, a = r
        samples.setdefault(_cell(s), [label, pred, []])[2].append((_finite(pos), tok, _finite(a)))
    lines = []
    for s, (label, pred, toks) in list(samples.items())[:_MAX_TOKEN_SAMPLES]:
        toks = sorted(toks, key=lambda p: p[0])[:_MAX_TOKENS]
        lim = max((abs(a) for _, _, a in toks), default=0.0) or 1.0
        spans = []
        for _, tok, a in toks:
            rgb = "214,39,40" if a >= 0 else "31,119,180"
            spans.append(
                f'<span class="tok" style="background:rgba({rgb},{0.75 * abs(a) / lim:.3f})" '
                f'title="{a:.4g}">{_cell(tok)}</span>'
            )
        mark = "" if str(label) == str(pred) else " ✗"
        lines.append(
            f'<p class="toks"><small>#{s} label {_cell(label)} · pred {_cell(pred)}{mark}</small>{" ".join(spans)}</p>'
        )
    more = f"<p>... {len(samples) - _MAX_TOKEN_SAMPLES} more samples</p>" if len(samples) > _MAX_TOKEN_SAMPLES else ""
    return (
        f"<h3>{html.escape(key)} <small>(step {_cell(t.get('step', '-'))}; red: evidence for the class, blue: "
        f"against; hover a word for its attribution)</small></h3>"
        f'<div class="tokens">{"".join(lines)}</div>{more}'
    )


def _images(key: str, items: list[tuple[int, Path]], skipped: list[str]) -> str:
    items = sorted(items, key=lambda t: t[0])
    shown = [items[0], items[-1]] if len(items) > 1 else items
    figs = []
    for i, (s, p) in enumerate(shown):
        try:
            raw = Path(p).read_bytes()
        except OSError as exc:
            skipped.append(f"image {key!r} step {s}: cannot be read ({exc.strerror or type(exc).__name__})")
            continue
        kind = image_type(raw)  # checked again on the very bytes that are embedded
        if kind is None:
            skipped.append(f"image {key!r} step {s}: not a PNG or JPEG image; not embedded")
            continue
        figs.append(
            _figure(
                _img_tag(base64.b64encode(raw).decode(), f"{key} step {s}", "media", kind),
                f"{key} — step {s}"
                + (" (first)" if i == 0 and len(shown) > 1 else " (latest)" if len(shown) > 1 else ""),
            )
        )
    return f'<h3>{html.escape(key)}</h3><div class="grid">{"".join(figs)}</div>' if figs else ""


def _drawn(what: str, skipped: list[str], fn: Callable[..., str], *args: Any) -> str:
    """``fn(*args)``, or ``""`` with ``what`` named in ``skipped`` when it cannot be drawn."""
    import matplotlib.pyplot as plt

    try:
        return fn(*args)
    except Exception as exc:
        plt.close("all")
        skipped.append(f"{what}: cannot be drawn ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})")
        return ""


def _section(sid: str, title: str, data: RunData, keys: set[str], skipped: list[str]) -> str:
    parts = [f'<section id="{sid}"><h2>{html.escape(title)}</h2>']
    scal = [k for k in keys if k in data.scalars]
    series = [
        _drawn(f"series {k!r}", skipped, _plot_series, k, data.series[k]) for k in sorted(keys) if k in data.series
    ]
    if scal:
        groups = _group_scalars(sid, scal)
        plots = [
            _drawn(f"plot {g!r}", skipped, _plot_lines, data, g, ks) for g, ks in list(groups.items())[:_MAX_PLOTS]
        ]
        parts.append(f'<div class="grid">{"".join(plots + series)}</div>')
        if len(groups) > _MAX_PLOTS:
            parts.append(f"<p>{len(groups) - _MAX_PLOTS} more scalar groups not plotted.</p>")
    elif series:
        parts.append('<div class="grid">' + "".join(series) + "</div>")
    parts += [_images(k, data.images[k], skipped) for k in sorted(keys) if k in data.images]
    parts += [
        _token_text(k, t) if [str(c) for c in t.get("columns", [])] == _TOKEN_COLUMNS else _table(k, t)
        for k in sorted(keys)
        if k in data.tables
        for t in [data.tables[k]]
    ]
    hists = [k for k in sorted(keys) if data.histograms.get(k)]
    if hists:
        parts.append(
            '<div class="grid">'
            + "".join(_drawn(f"histogram {k!r}", skipped, _plot_hist, k, data.histograms[k]) for k in hists[:_MAX_HIST])
            + "</div>"
        )
    parts.append("</section>")
    return "".join(parts)


def _not_shown(skipped: list[str]) -> str:
    items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped[:_MAX_SKIPPED])
    more = f"<p>... and {len(skipped) - _MAX_SKIPPED} more.</p>" if len(skipped) > _MAX_SKIPPED else ""
    return (
        f'<section id="skipped"><h2>Not shown</h2><p>{len(skipped)} item(s) of this run were skipped: files '
        f"outside the run folder, files that are not images, records of the wrong shape, plots that could not "
        f"be drawn.</p><ul>{items}</ul>{more}</section>"
    )


def render(data: RunData, title: str | None = None) -> str:
    """The report page for ``data`` as an HTML string.

    Examples:
        >>> from lightning_nas.report import RunData, render
        >>> data = RunData(name="demo", source="files", scalars={"val_acc": [(0, 0.5), (1, 0.9)]})
        >>> html = render(data, title="<demo>")
        >>> html.startswith("<!DOCTYPE html>"), "&lt;demo&gt;" in html  # every value escaped
        (True, True)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: draw to PNG only
    title = title or f"lightning_nas report: {data.name}"
    skipped = list(data.skipped)
    buckets: dict[str, set[str]] = {}
    for k in data.keys():
        if k == "epoch":  # Lightning's epoch counter says nothing a reader needs
            continue
        sid = next(s for s, _, pred in SECTIONS if pred(k))
        buckets.setdefault(sid, set()).add(k)
    sections = [(sid, t) for sid, t, _ in SECTIONS if sid in buckets]
    # keys are the run's: drawn as plain text (no mathtext: "$x" or "$\\frac{" in a key must not stop the page)
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        body = [_section(sid, t, data, buckets[sid], skipped) for sid, t in sections]
    summ = {**{f"config/{k}": v for k, v in data.config.items()}, **data.summary}
    if summ:
        rows = [[k, v] for k, v in sorted(summ.items(), key=lambda kv: str(kv[0])) if not isinstance(v, (dict, list))]
        body.append(
            '<section id="summary"><h2>Summary</h2>'
            + _table("final values", {"columns": ["key", "value"], "rows": rows})
            + "</section>"
        )
        sections.append(("summary", "Summary"))
    if skipped:
        body.append(_not_shown(skipped))
        sections.append(("skipped", "Not shown"))
    if not body:
        body.append("<section><h2>Empty run</h2><p>Nothing was logged.</p></section>")
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"
        f"<p>source: {html.escape(data.source)} · {len(data.keys())} logged keys</p></header>"
        f"<nav>{nav}</nav><main>{''.join(body)}</main></body></html>"
    )


def build_report(run_dir: str | Path, out: str | Path = "report.html", title: str | None = None) -> Path:
    """Write the self-contained HTML report of the run under ``run_dir`` to ``out``; return its path.

    ``run_dir``: a W&B run or save dir (offline runs included), or a ``Tracker.files_dir`` file sink.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_nas.report import build_report
        >>> from lightning_nas.tracking import Tracker
        >>> run = Path(tempfile.mkdtemp())
        >>> tracker = Tracker(files_dir=run / "nas_files")
        >>> for epoch, acc in enumerate([0.5, 0.8, 0.9]):
        ...     tracker.log_scalars({"val_acc": acc}, step=epoch)
        >>> tracker.log_table("nas/decisions", ["label", "chosen"], [["block1", "conv5"]])
        >>> page = build_report(run, out=run / "report.html", title="digits")
        >>> html = page.read_text()
        >>> "conv5" in html, "<script" in html  # self-contained, no script, fetches nothing
        (True, False)
    """
    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(
            f"report: the output {str(path)!r} is a folder; pass a file name such as {str(path / 'report.html')!r}"
        )
    data = load_run(run_dir)
    page = render(data, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
