"""``test.py``: evaluate a saved network on every ``test_*`` / ``val_*`` set of an options file (PSNR/SSIM on Y)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import torch

from ldt.compat import patch_basicsr
from ldt.options import OptionsError, load_options

patch_basicsr()
import ldt.archs  # noqa: E402,F401
import ldt.data  # noqa: E402,F401
from ldt.data.cameras import DatasetError  # noqa: E402
import ldt.models  # noqa: E402,F401
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ldt.evaluation import MetricTable, evaluate_loader  # noqa: E402
from ldt.train import PROJECT_ROOT, build_parser, build_val_loaders, resolve_num_gpu  # noqa: E402


def run_test(opt: dict, root: Path = PROJECT_ROOT) -> MetricTable:
    """Evaluate ``path:pretrain_network_g`` on the option file's test sets; write results/<name>/results.{md,json}."""
    if not opt["path"].get("pretrain_network_g"):
        raise OptionsError("path:pretrain_network_g: the network to test is missing")
    resolve_num_gpu(opt)
    opt.update(dist=False, rank=0, world_size=1)
    out = root / "results" / opt["name"]
    opt["path"].update(results_root=str(out), log=str(out), visualization=str(out / "visualization"))
    model = build_model(opt)
    val = opt["val"]
    table = MetricTable(tuple(val["metrics"]))
    for name, loader in build_val_loaders(opt).items():
        def save_image(path, sr, values, name=name):
            target = out / "visualization" / name / f"{Path(path).stem}_{opt['name']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), tensor2img([sr[0].cpu()]))

        values = evaluate_loader(
            model.net_g, loader, model.device, opt["scale"], crop_border=val["crop_border"], tile=val["tile"],
            overlap=val["tile_overlap"], metrics=tuple(val["metrics"]), progress=val["pbar"], description=name,
            on_image=save_image if val["save_img"] else None,
        )
        table.add(name, values)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"name": opt["name"], "network": opt["path"]["pretrain_network_g"],
                                                  **table.to_dict()}, indent=1))
    (out / "results.md").write_text(table.markdown("camera") + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "test")
    args = parser.parse_args(argv)
    if args.opt is None:
        parser.error("-opt is required, e.g. -opt test_MambaIR_SR_x4.yml")
    try:
        opt = load_options(args.opt, is_train=False, overrides=args.force_yml)
        with torch.no_grad():
            table = run_test(opt)
    except (OptionsError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.markdown("camera"), flush=True)
    return 0
