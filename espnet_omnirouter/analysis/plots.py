"""Figures of the routing analysis.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: no display is needed and the process-wide backend is left alone.
"""
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure


def short_layer_names(names: Sequence[str]) -> List[str]:
    """Compact tick labels: ``encoders.3.feed_forward_macaron`` -> ``3m``, ``encoders.3.feed_forward`` -> ``3``."""
    out = []
    for i, name in enumerate(names):
        m = re.fullmatch(r"(?:.*\.)?encoders\.(\d+)\.feed_forward(_macaron)?", name)
        out.append(f"{m.group(1)}{'m' if m.group(2) else ''}" if m else str(i))
    return out


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)


def _heatmap(fig, ax, matrix, xlabels, ylabels, title, vmin=None, vmax=None, cmap="viridis", fmt="{:.2f}"):
    m = np.asarray(matrix, dtype=np.float64)
    im = ax.imshow(m, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(xlabels)), labels=xlabels, fontsize=7, rotation=90 if len(xlabels) > 12 else 0)
    ax.set_yticks(range(len(ylabels)), labels=ylabels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if m.size and m.shape[0] * m.shape[1] <= 144:
        lo, hi = (np.nanmin(m) if vmin is None else vmin), (np.nanmax(m) if vmax is None else vmax)
        mid = 0.5 * (lo + hi)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="black" if v > mid else "white")
    return im


def expert_colormap(num_experts: int):
    """A discrete colormap with one colour per expert."""
    if num_experts <= 10:
        return ListedColormap(colormaps["tab10"].colors[:num_experts])
    if num_experts <= 20:
        return ListedColormap(colormaps["tab20"].colors[:num_experts])
    return colormaps["viridis"].resampled(num_experts)


def plot_usage(usage: Dict, layer_names: Sequence[str], path: str, title: str = "") -> None:
    """Heatmap of usage fractions (layers x experts) and per-layer normalised entropy."""
    frac = np.asarray(usage["fractions"])
    num_layers, num_experts = frac.shape
    labels = short_layer_names(layer_names)
    fig = _figure(4 + 0.35 * num_experts, 2 + 0.3 * num_layers)
    ax, bx = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
    _heatmap(fig, ax, frac, [str(e) for e in range(num_experts)], labels, "fraction of frames per expert", vmin=0)
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    y = np.arange(num_layers)
    bx.barh(y, usage["normalised_entropy"], color="tab:blue")
    bx.set_xlim(0, 1)
    bx.set_xlabel("entropy / log E")
    for yi, h, k in zip(y, usage["normalised_entropy"], usage["num_unused"]):
        if k:
            bx.text(min(h + 0.03, 0.6), yi, f"{k} unused", va="center", fontsize=6)
    bx.set_title("usage entropy", fontsize=9)
    fig.suptitle(title or "Expert usage", fontsize=10)
    _save(fig, path)


def plot_layer_dependence(dep: Dict, layer_names: Sequence[str], path: str, title: str = "") -> None:
    """Cramer's V and NMI between layers; index agreement and its chance level when present."""
    labels = short_layer_names(layer_names)
    panels = [
        (dep["cramers_v"], "Cramer's V", 0, 1, "magma"),
        (dep["nmi"], "NMI = I / sqrt(H_i H_j)", 0, 1, "magma"),
    ]
    if "agreement" in dep:
        panels += [
            (dep["agreement"], "index agreement", 0, 1, "viridis"),
            (dep["agreement_chance"], "agreement chance  sum_e p_i p_j", 0, 1, "viridis"),
        ]
    n = len(labels)
    side = 2.5 + 0.25 * n
    fig = _figure(side * min(len(panels), 2) + 1, side * ((len(panels) + 1) // 2))
    axes = np.atleast_1d(fig.subplots((len(panels) + 1) // 2, min(len(panels), 2))).ravel()
    for ax, (m, name, lo, hi, cmap) in zip(axes, panels):
        _heatmap(fig, ax, m, labels, labels, name, vmin=lo, vmax=hi, cmap=cmap)
        ax.set_xlabel("MoE layer")
        ax.set_ylabel("MoE layer")
    fig.suptitle(title or "Dependence between layers' expert choices", fontsize=10)
    _save(fig, path)


def plot_segments(
    seg: Dict,
    example: Optional[np.ndarray],
    example_id: str,
    layer_names: Sequence[str],
    num_experts: int,
    path: str,
    title: str = "",
) -> None:
    """Switch rate and mean segment length per layer against the shuffled baseline, and an
    example utterance's experts over time (one row per layer)."""
    labels = short_layer_names(layer_names)
    num_layers = len(labels)
    fig = _figure(max(8, 0.3 * num_layers + 4), 6 + 0.15 * num_layers)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    ax, bx = top.subplots(1, 2)
    x = np.arange(num_layers)
    w = 0.4
    ax.bar(x - w / 2, seg["switch_rate"], w, label="observed")
    ax.bar(x + w / 2, seg["switch_rate_shuffled"], w, label="frames shuffled", color="tab:gray")
    ax.set_ylim(0, 1)
    ax.set_title("switch rate between consecutive frames", fontsize=9)
    bx.bar(x - w / 2, seg["mean_segment_length"], w, label="observed")
    bx.bar(x + w / 2, seg["mean_segment_length_shuffled"], w, label="frames shuffled", color="tab:gray")
    bx.set_title("mean segment length (frames)", fontsize=9)
    for a in (ax, bx):
        a.set_xticks(x, labels=labels, fontsize=7, rotation=90 if num_layers > 12 else 0)
        a.set_xlabel("MoE layer")
        a.legend(fontsize=7)
    cx = bottom.subplots(1, 1)
    if example is not None and len(example):
        im = cx.imshow(
            np.asarray(example).T,
            aspect="auto",
            interpolation="nearest",
            cmap=expert_colormap(num_experts),
            vmin=-0.5,
            vmax=num_experts - 0.5,
        )
        cx.set_yticks(range(num_layers), labels=labels, fontsize=7)
        cx.set_xlabel("encoder frame")
        cx.set_ylabel("MoE layer")
        cbar = bottom.colorbar(im, ax=cx, ticks=range(num_experts) if num_experts <= 20 else None)
        cbar.set_label("expert")
    cx.set_title(f"experts over time: {example_id}", fontsize=9)
    fig.suptitle(title or "Temporal consistency of routing", fontsize=10)
    _save(fig, path)


def plot_sets(sets: Dict, layer_names: Sequence[str], path: str, title: str = "") -> None:
    """Per-set usage heatmaps and the Jensen-Shannon divergence between sets per layer."""
    labels = short_layer_names(layer_names)
    names = list(sets["usage"])
    num_layers = len(labels)
    num_experts = len(sets["usage"][names[0]][0])
    fig = _figure(3.2 * (len(names) + 1) + 0.2 * num_experts, 2.5 + 0.3 * num_layers)
    axes = np.atleast_1d(fig.subplots(1, len(names) + 1))
    for ax, name in zip(axes, names):
        _heatmap(fig, ax, sets["usage"][name], [str(e) for e in range(num_experts)], labels, f"usage: {name}", vmin=0)
        ax.set_xlabel("expert")
    jx = axes[-1]
    y = np.arange(num_layers)
    pairs = sets["pairs"]
    h = 0.8 / max(len(pairs), 1)
    for k, pair in enumerate(pairs):
        jx.barh(y - 0.4 + (k + 0.5) * h, pair["jsd"], h, label=f"{pair['a']} vs {pair['b']}")
    jx.set_yticks(y, labels=labels, fontsize=7)
    jx.invert_yaxis()
    top = max([max(p["jsd"]) for p in pairs] + [0.0])
    jx.set_xlim(0, max(1.15 * top, 0.01))
    jx.set_xlabel("JSD (bits)")
    jx.set_title("Jensen-Shannon divergence of usage", fontsize=9)
    jx.legend(fontsize=6)
    fig.suptitle(title or "Expert usage per data set", fontsize=10)
    _save(fig, path)
