"""SR evaluation: tiled inference and PSNR/SSIM on the Y channel exactly as BasicSR computes them.

Metrics go through basicsr's ``calculate_psnr`` / ``calculate_ssim`` on uint8 images (``tensor2img``), which is the
official evaluation, so our numbers are directly comparable with published ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ldt.compat import patch_basicsr

patch_basicsr()
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402

METRICS = {"calculate_psnr": calculate_psnr, "calculate_ssim": calculate_ssim}
DEFAULT_METRICS = {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}}
# Pixels a metric needs besides the crop borders: basicsr's SSIM keeps only the 'valid' part of an 11x11 Gaussian
# filter. On less, both return the mean of nothing (NaN) with a warning.
METRIC_WINDOW = {"calculate_psnr": 1, "calculate_ssim": 11}
# Decimals a table shows of each metric type: PSNR in dB, SSIM in [0, 1] (its differences are in the third place).
METRIC_DECIMALS = {"calculate_psnr": 2, "calculate_ssim": 4}


def metric_border(spec: Mapping, scale: int) -> int:
    """The pixels a metric cuts at each border: its ``crop_border``, None meaning the scale."""
    return scale if spec.get("crop_border") is None else spec["crop_border"]


def smallest_gt_side(metrics: Mapping[str, Mapping], scale: int) -> tuple[int, str | None]:
    """(the smallest GT side every metric of ``metrics`` can be computed on, the metric that needs it): twice its
    crop border plus its window; (1, None) for no metrics (an evaluation that only saves images)."""
    def need(spec: Mapping) -> int:
        return 2 * metric_border(spec, scale) + METRIC_WINDOW[spec["type"]]
    if not metrics:
        return 1, None
    name = max(metrics, key=lambda key: need(metrics[key]))
    return need(metrics[name]), name


def gt_size_need(metrics: Mapping[str, Mapping], scale: int) -> tuple[int, str] | None:
    """(the smallest GT side ``metrics`` can be computed on, what needs it and the remedy, in words), or None for no
    metrics: the one statement of the rule for the up-front size check and for :func:`image_metrics`."""
    side, name = smallest_gt_side(metrics, scale)
    if name is None:
        return None
    spec = metrics[name]
    window = METRIC_WINDOW[spec["type"]]
    return side, (f"val:metrics:{name} needs at least {side}x{side} (a crop border of {metric_border(spec, scale)} "
                  f"px at each side{f' and an {window}x{window} window' if window > 1 else ''}) or it is NaN; "
                  f"remove it, or lower val:metrics:{name}:crop_border")


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


@torch.no_grad()
def tiled_forward(model: nn.Module, lq: torch.Tensor, scale: int, tile: int | None = None, overlap: int = 32) -> torch.Tensor:
    """``model(lq)``, or the same computed on overlapping ``tile``×``tile`` LR tiles averaged where they overlap.

    Large DRealSR test images (up to ~1445×945 LR) do not fit a transformer's attention memory in one piece; tiles
    with an overlap wider than the network's effective receptive field give the same result up to border effects.
    """
    if tile is None or (lq.shape[-2] <= tile and lq.shape[-1] <= tile):
        return model(lq)
    if overlap >= tile:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile ({tile})")
    batch, _, height, width = lq.shape
    stride = tile - overlap
    output = None
    weight = torch.zeros(1, 1, height * scale, width * scale, device=lq.device, dtype=lq.dtype)
    for top in _tile_starts(height, tile, stride):
        for left in _tile_starts(width, tile, stride):
            patch = lq[..., top : top + tile, left : left + tile]
            out = model(patch)
            if output is None:
                output = torch.zeros(batch, out.shape[1], height * scale, width * scale, device=lq.device, dtype=out.dtype)
            rows = slice(top * scale, top * scale + out.shape[-2])
            cols = slice(left * scale, left * scale + out.shape[-1])
            output[..., rows, cols] += out
            weight[..., rows, cols] += 1
    return output / weight


def image_metrics(sr: torch.Tensor, gt: torch.Tensor, crop_border: int, metrics: Mapping[str, Mapping] = DEFAULT_METRICS) -> dict[str, float]:
    """The ``val:metrics`` of one image pair (tensors in [0, 1], 1×C×H×W or C×H×W), via basicsr on uint8.

    Each metric is ``{type: calculate_psnr | calculate_ssim, crop_border: (None: ``crop_border``), test_y_channel}``.
    """
    sr_img, gt_img = tensor2img([sr.detach().cpu()]), tensor2img([gt.detach().cpu()])
    if sr_img.shape != gt_img.shape:
        raise ValueError(f"SR output {sr_img.shape} and GT {gt_img.shape} differ in size")
    need = gt_size_need(metrics, crop_border)
    if need is not None and min(gt_img.shape[:2]) < need[0]:  # basicsr returns NaN, with numpy's warning
        raise ValueError(f"GT is {gt_img.shape[0]}x{gt_img.shape[1]} pixels, {need[1]}")
    values = {}
    for name, spec in metrics.items():
        border = metric_border(spec, crop_border)
        values[name] = float(METRICS[spec["type"]](sr_img, gt_img, crop_border=border,
                                                   test_y_channel=spec.get("test_y_channel", True)))
    return values


@dataclass
class MetricTable:
    """Per-dataset (camera) mean metrics, with the mean over datasets; formats as a markdown table, each metric to
    the decimals of its type (``types``: metric name -> ``val:metrics`` type; a metric may have any name)."""

    metrics: tuple[str, ...] = ("psnr", "ssim")
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=lambda: {name: spec["type"] for name, spec in DEFAULT_METRICS.items()})
    unscored: dict[str, str] = field(default_factory=dict)
    """Sets counted but not scored, with why (an LR-only set: no GT); their rows hold no metric."""

    @classmethod
    def of(cls, metrics: Mapping[str, Mapping]) -> MetricTable:
        """An empty table of the ``val:metrics`` options ``metrics``."""
        return cls(tuple(metrics), types={name: spec["type"] for name, spec in metrics.items()})

    def add(self, dataset: str, values: list[dict[str, float]], unscored: str | None = None) -> dict[str, float]:
        """The mean metrics of ``dataset``'s images ``values``; ``unscored``: why the set has none (its images are
        counted, its row holds no metric and is left out of the mean)."""
        means = {} if unscored else {m: float(np.mean([v[m] for v in values])) for m in self.metrics}
        if unscored:
            self.unscored[dataset] = unscored
        self.rows[dataset] = means
        self.counts[dataset] = len(values)
        return means

    def scored(self) -> list[str]:
        """The sets with metrics."""
        return [name for name in self.rows if name not in self.unscored]

    def mean(self, datasets: list[str] | None = None) -> dict[str, float]:
        names = datasets if datasets is not None else self.scored()
        return {m: float(np.mean([self.rows[n][m] for n in names])) for m in self.metrics} if names else {}

    def to_dict(self) -> dict:
        return {"rows": self.rows, "counts": self.counts, "mean": self.mean(),
                **({"unscored": self.unscored} if self.unscored else {})}

    @classmethod
    def from_dict(cls, data: Mapping, metrics: Mapping[str, Mapping]) -> MetricTable | None:
        """The table :meth:`to_dict` wrote (a training state's validation history keeps one per validation), or
        None when it does not hold every one of ``metrics`` (``val:metrics`` options) for each of its sets with a
        count."""
        rows, counts = data.get("rows"), data.get("counts")
        if not isinstance(rows, dict) or not isinstance(counts, dict) or rows.keys() != counts.keys():
            return None
        if not all(isinstance(values, dict) and all(m in values for m in metrics) for values in rows.values()):
            return None
        table = cls.of(metrics)
        table.rows = {name: {m: float(values[m]) for m in metrics} for name, values in rows.items()}
        table.counts = {name: int(count) for name, count in counts.items()}
        return table

    def markdown(self, title: str = "dataset") -> str:
        header = f"| {title} | images | " + " | ".join(m.upper() for m in self.metrics) + " |"
        lines = [header, "|" + "---|" * (2 + len(self.metrics))]
        for name, values in self.rows.items():
            cells = ([self.unscored[name].split(" (")[0]] * len(self.metrics) if name in self.unscored
                     else [self._format(m, values[m]) for m in self.metrics])
            lines.append(f"| {name} | {self.counts[name]} | " + " | ".join(cells) + " |")
        scored = self.scored()
        if len(scored) > 1:
            mean = self.mean()
            lines.append(f"| **mean** | {sum(self.counts[n] for n in scored)} | "
                         + " | ".join(self._format(m, mean[m]) for m in self.metrics) + " |")
        return "\n".join(lines)

    def _format(self, metric: str, value: float) -> str:
        return f"{value:.{METRIC_DECIMALS[self.types[metric]]}f}"


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader,
    device: torch.device,
    scale: int,
    *,
    tile: int | None = None,
    overlap: int = 32,
    metrics: Mapping[str, Mapping] = DEFAULT_METRICS,
    progress: bool = False,
    description: str = "eval",
    on_image=None,
) -> list[dict[str, float]]:
    """Metrics of every image of a validation loader (batch size 1; crop border: the scale unless a metric sets
    one); an image without GT (an LR-only set) has none (``{}``). ``on_image(name, sr, values)`` is optional."""
    was_training = model.training
    model.eval()
    results = []
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=description, unit="img", leave=False, dynamic_ncols=True)
    try:
        for data in iterator:
            lq = data["lq"].to(device)
            sr = tiled_forward(model, lq, scale, tile, overlap).clamp_(0, 1)
            if "gt" not in data:  # an LR-only set (BasicSR's SingleImageDataset): nothing to score
                results.append({})
                if on_image is not None:
                    on_image(data["lq_path"][0], sr, {})
                continue
            try:
                values = image_metrics(sr[0], data["gt"][0], scale, metrics)
            except ValueError as err:  # sizes of a dataset whose pairs were not checked up front (an LMDB)
                from ldt.data.cameras import DatasetError

                raise DatasetError(f"{data['gt_path'][0]} / {data['lq_path'][0]}: {err}") from None
            results.append(values)
            if on_image is not None:
                on_image(data["lq_path"][0], sr, values)
    finally:
        model.train(was_training)
    if not results:
        raise ValueError(f"validation set '{description}' is empty")
    return results
