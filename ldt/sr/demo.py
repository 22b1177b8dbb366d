"""The embedded demo (``python Train_pip.py`` with no arguments): LDT vs FT on the synthetic camera benchmark.

1. build the synthetic six-camera benchmark and a clean bicubic set from scikit-image's photos (cached);
2. pre-train a small SAFMN on the bicubic set, as the paper starts from a pretrained SR model (cached);
3. fine-tune it on the Olympus-like source camera with FT, FT-EMA (the control for LDT's averaging) and LDT+DPU
   (same budget, same seed);
4. evaluate pretrained / FT / FT-EMA / LDT+DPU on the source and the five target cameras, print and save the table,
   with one line on what the multi-seed study (``scripts/study.py``) found;
5. draw the figures: gradient spread per layer, validation curves, visual crops.

Every finished stage is cached under ``experiments/demo/`` by a hash of its options; a second run reuses it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ldt.atomic import atomic_write_text
from ldt.cli import strict_json
from ldt.compat import patch_basicsr
from ldt.data.cameras import TARGET_CAMERAS
from ldt.data.synthetic_cameras import build_bicubic_pretrain_set, build_synthetic_cameras
from ldt.sr.experiment import ARCHS, RunBudget, camera_dataset, camera_run_options, run_stage
from ldt.sr.flags import BUDGETS, DemoBudget, demo_parser
from ldt.sr.options import PROJECT_ROOT, prepare_options

patch_basicsr()
from basicsr.utils import tensor2img  # noqa: E402

from ldt.core import Partition, method_class  # noqa: E402
from ldt.sr.evaluate import run_test  # noqa: E402
from ldt.sr.figures import plot_gradient_spread, plot_validation_curves, plot_visual_comparison  # noqa: E402
from ldt.sr.metrics import image_metrics  # noqa: E402
from ldt.sr.study import headline as study_headline  # noqa: E402
from ldt.sr.train import run_reporting_errors  # noqa: E402
from ldt.weights import read_weights  # noqa: E402

CAMERAS = ("source",) + TARGET_CAMERAS
ARCH = "safmn_tiny"  # 19k parameters: 4k pre-training + 3 fine-tunings of 1,000 iterations fit the CPU budget
DEMO_METHODS = ("ft", "ft_ema", "ldt_dpu")  # the table's columns (registry names), after the pre-trained network


def evaluate_weights(weights: Path, data_root: Path, network: dict, root: Path, name: str) -> dict[str, dict[str, float]]:
    datasets = {"test_0": camera_dataset("source", data_root, ["olympus"])}
    for index, camera in enumerate(TARGET_CAMERAS, start=1):
        datasets[f"test_{index}"] = camera_dataset(camera, data_root, [camera])
    opt = {"name": name, "model_type": "LDTModel", "scale": 4, "num_gpu": "auto", "datasets": datasets,
           "network_g": network, "path": {"pretrain_network_g": str(weights)}, "val": {"pbar": False}}
    return run_test(prepare_options(opt, is_train=False, source="demo evaluation"), root=root).rows


def results_table(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per camera (+ target mean), PSNR/SSIM per method."""
    header = "| camera | " + " | ".join(f"{m} PSNR / SSIM" for m in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for camera in CAMERAS:
        cells = [f"{rows[camera]['psnr']:.2f} / {rows[camera]['ssim']:.4f}" for rows in columns.values()]
        lines.append(f"| {camera} | " + " | ".join(cells) + " |")
    means = []
    for rows in columns.values():
        means.append(f"{np.mean([rows[c]['psnr'] for c in TARGET_CAMERAS]):.2f} / "
                     f"{np.mean([rows[c]['ssim'] for c in TARGET_CAMERAS]):.4f}")
    lines.append("| **target mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def visual_crops(weights: dict[str, Path], network: dict, data_root: Path, out: Path, camera: str = "sony", crop: int = 96) -> Path:
    """Paper Fig. 4: LR, each method's output and GT on a crop of one target-camera test image."""
    import ldt.archs  # noqa: F401
    import ldt.data  # noqa: F401
    from basicsr.data import build_dataset
    from basicsr.utils.registry import ARCH_REGISTRY

    dataset = build_dataset({**camera_dataset(camera, data_root, [camera]), "phase": "val", "scale": 4})
    sample = dataset[0]
    lq, gt = sample["lq"].unsqueeze(0), sample["gt"]
    top = max(0, (gt.shape[-2] - crop) // 2) // 4 * 4
    left = max(0, (gt.shape[-1] - crop) // 2) // 4 * 4
    window = (slice(top, top + crop), slice(left, left + crop))

    def rgb(tensor: torch.Tensor) -> np.ndarray:
        return tensor2img([tensor.cpu()], rgb2bgr=True)[..., ::-1][window]

    gt_crop = gt[..., window[0], window[1]]
    lr_up = torch.nn.functional.interpolate(lq, scale_factor=4, mode="nearest")[0]
    panels = [("LR (nearest)", rgb(lr_up), image_metrics(lr_up[..., window[0], window[1]], gt_crop, 0)["psnr"])]
    for method, path in weights.items():
        net = ARCH_REGISTRY.get(network["type"])(**{k: v for k, v in network.items() if k != "type"})
        net.load_state_dict(read_weights(path, model=net), strict=True)
        with torch.no_grad():
            sr = net.eval()(lq)[0].clamp(0, 1)
        panels.append((method, rgb(sr), image_metrics(sr[..., window[0], window[1]], gt_crop, 0)["psnr"]))
    panels.append(("GT", rgb(gt), None))
    return plot_visual_comparison(panels, out, title=f"{camera} test image {Path(sample['lq_path']).name}")


def method_options(plan: DemoBudget) -> dict:
    """The ``ldt:`` options of the demo's runs. The paper exchanges every 10 of 200k steps (20k exchanges); with
    1,000 steps, exchanging every step keeps the composite (its groups follow the trained branches by EMA, W up to
    0.999) from lagging far behind the trained branches."""
    return {"probe": {"num_batches": plan.probe_batches}, "exchange": {"interval": plan.exchange_interval}}


def pretrain_stage(root: Path, budget: str, seed: int, *, force: bool = False, train_if_missing: bool = True) -> Path:
    """The demo's pre-trained SAFMN (clean bicubic pairs, cached under experiments/demo*/pretrain): the stand-in for
    the pretrained SR network the paper fine-tunes. The study fine-tunes the same network. Without
    ``train_if_missing`` (the study's ``--collect``) only its path: nothing is built or trained."""
    plan = BUDGETS[budget]
    prefix = "demo" if budget == "full" else f"demo_{budget}"
    name = f"{prefix}/pretrain"
    weights = root / "experiments" / name / "models" / "net_g_latest.pth"
    if not (train_if_missing or force):
        return weights
    bicubic = build_bicubic_pretrain_set(root / "datasets" / ("synthetic_bicubic_tiny" if plan.tiny_data
                                                              else "synthetic_bicubic"), tiny=plan.tiny_data)
    opt = camera_run_options(name, bicubic, RunBudget(plan.pretrain_iters, plan.batch_size, plan.gt_size,
                                                      plan.pretrain_val_freq),
                             arch=ARCH, method="ft", seed=seed, source=("bicubic",), targets=(), lr=1e-3,
                             ldt=method_options(plan))
    run_stage(opt, root, force)
    return weights


def run_demo(root: Path = PROJECT_ROOT, budget: str = "full", force: bool = False, seed: int = 0) -> dict:
    """The whole demo; returns the per-camera metrics of each column and the wall time."""
    start = time.time()
    plan = BUDGETS[budget]
    data_dir = root / "datasets"
    cameras = build_synthetic_cameras(data_dir / ("synthetic_cameras_tiny" if plan.tiny_data else "synthetic_cameras"), tiny=plan.tiny_data)
    ldt = method_options(plan)
    prefix = "demo" if budget == "full" else f"demo_{budget}"
    pretrained = pretrain_stage(root, budget, seed, force=force)
    reports, weights = {}, {"pretrained": pretrained}
    fine_budget = RunBudget(plan.finetune_iters, plan.batch_size, plan.gt_size, plan.finetune_val_freq)
    network = ARCHS[ARCH]
    columns = {"pretrained": evaluate_weights(pretrained, cameras, network, root, f"{prefix}/pretrained_eval")}
    for name in DEMO_METHODS:
        label = method_class(name).label
        opt = camera_run_options(f"{prefix}/{name}", cameras, fine_budget, arch=ARCH, method=name, seed=seed,
                                 pretrained=pretrained, ldt=ldt)
        reports[label] = run_stage(opt, root, force)
        weights[label] = root / "experiments" / opt["name"] / "models" / "net_g_best.pth"
        columns[label] = evaluate_weights(weights[label], cameras, network, root, f"{prefix}/{name}_eval")

    out = root / "experiments" / prefix
    table = results_table(columns)
    probed = next(name for name in DEMO_METHODS if method_class(name).partition_source == "score")
    partition = Partition.load(out / probed / "partition.json")
    figures = [
        plot_gradient_spread(partition, out / "fig_gradient_spread.png", title="synthetic Olympus source"),
        plot_validation_curves({label: r["history"] for label, r in reports.items()}, out / "fig_validation_psnr.png"),
        visual_crops(weights, network, cameras, out / "fig_visual_comparison.png"),
    ]
    seconds = time.time() - start
    summary = {"budget": budget, "seconds": seconds, "columns": columns, "figures": [str(f) for f in figures],
               "best_iters": {label: r["best"] for label, r in reports.items()}}
    atomic_write_text(out / "demo_results.json", strict_json(summary, indent=1))
    atomic_write_text(out / "demo_results.md", table + "\n")
    print("\nLDT demo — synthetic cameras, x4, PSNR/SSIM on Y (best checkpoint selected on the source camera)\n")
    print(table)
    print("\n" + study_headline(root / "experiments" / "study"))
    print(f"\nfigures: {', '.join(str(f) for f in figures)}")
    print(f"demo wall time: {seconds:.1f} s ({budget} budget)")
    return summary


def main(argv: list[str] | None = None, prog: str = "Train_pip.py") -> int:
    """The demo's command line: ``python Train_pip.py [demo] [flags]``, or ``python -m ldt.sr.demo`` (``prog``)."""
    args = demo_parser(prog, __doc__).parse_args(argv)
    return run_reporting_errors(lambda: run_demo(budget=args.budget, force=args.force, seed=args.seed))


if __name__ == "__main__":  # python -m ldt.sr.demo [--budget quick]: the demo of python Train_pip.py
    raise SystemExit(main(prog="python -m ldt.sr.demo"))
