"""Figures of the paper, from our own runs: gradient spread per layer (Fig. 2), validation curves, visual crops (Fig. 4)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldt.atomic import atomic_write_bytes  # noqa: E402
from ldt.core import Partition  # noqa: E402

STABLE, UNSTABLE = "#3b75af", "#d1495b"


def plot_gradient_spread(partition: Partition, path: str | Path, title: str = "") -> Path:
    """(a) gradient std of every layer in network order, coloured by group; (b)/(c) sorted std inside each group."""
    if partition.criterion != "var" or not partition.scores:
        raise ValueError(f"the gradient-spread figure needs a 'var' probe partition, got '{partition.criterion}'")
    layers = list(partition.layers)
    unstable = set(partition.unstable)
    std = np.array([math.sqrt(max(partition.scores[layer], 0.0)) for layer in layers])
    is_unstable = np.array([partition.layers[layer][0] in unstable for layer in layers])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    axes[0].bar(np.arange(len(layers)), std, color=np.where(is_unstable, UNSTABLE, STABLE), width=1.0)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("layer (network order)")
    axes[0].set_ylabel("gradient std over probe batches")
    axes[0].set_title("(a) all layers" + (f" — {title}" if title else ""))
    axes[0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in (STABLE, UNSTABLE)], labels=["stable", "unstable"])
    for ax, mask, colour, name in ((axes[1], is_unstable, UNSTABLE, "(b) unstable"), (axes[2], ~is_unstable, STABLE, "(c) stable")):
        values = np.sort(std[mask])
        ax.bar(np.arange(len(values)), values, color=colour, width=1.0)
        ax.set_yscale("log")
        spread = values[-1] / max(values[0], 1e-30) if len(values) else float("nan")
        ax.set_title(f"{name} layers, sorted (max/min {spread:.1f}×)")
        ax.set_xlabel("rank inside the group")
    fig.tight_layout()
    return _save(fig, path)


def plot_validation_curves(histories: dict[str, list[dict]], path: str | Path, metric: str = "psnr") -> Path:
    """Validation ``metric`` per camera over iterations, one line per method, one panel per camera."""
    cameras = sorted({camera for history in histories.values() for entry in history for camera in entry["rows"]})
    if not cameras:
        raise ValueError("no validation history to plot")
    cols = min(3, len(cameras))
    rows = math.ceil(len(cameras) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, camera in zip(axes.flat, cameras):
        for method, history in histories.items():
            points = [(e["iter"], e["rows"][camera][metric]) for e in history if camera in e["rows"]]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=method)
        ax.set_title(camera)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cameras):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_visual_comparison(panels: list[tuple[str, np.ndarray, float | None]], path: str | Path, title: str = "") -> Path:
    """Crops side by side (RGB uint8 arrays), captioned with their name and PSNR (paper Fig. 4)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (name, image, psnr) in zip(np.atleast_1d(axes), panels):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name if psnr is None else f"{name}\n{psnr:.2f} dB", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_intervals(series: dict[str, list[tuple[float, float, float | None, float | None]]], path: str | Path, *,
                   xlabel: str, ylabel: str, title: str = "") -> Path:
    """Points with interval bars, one series per label: ``(x, value, low, high)`` (a point without an interval has
    low/high None); the zero line marks "no difference"."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labels = list(series)
    width = 0.06 * (max((p[0] for points in series.values() for p in points), default=1) or 1)
    for index, label in enumerate(labels):
        offset = (index - (len(labels) - 1) / 2) * width / max(1, len(labels))
        xs = [p[0] + offset for p in series[label]]
        values = [p[1] for p in series[label]]
        low = [p[1] - p[2] if p[2] is not None else 0.0 for p in series[label]]
        high = [p[3] - p[1] if p[3] is not None else 0.0 for p in series[label]]
        ax.errorbar(xs, values, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (a kill mid-write leaves the previous figure, a full disk a DiskError)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
