"""``test.py``: evaluate a saved network on every ``test_*`` / ``val_*`` set of an options file (PSNR/SSIM on Y)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import torch

from ldt.compat import patch_basicsr
from ldt.sr.options import PROJECT_ROOT, OptionsError, load_options

patch_basicsr()
import ldt.archs  # noqa: E402,F401
import ldt.data  # noqa: E402,F401
import ldt.models  # noqa: E402,F401
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ldt.data.cameras import DatasetError  # noqa: E402
from ldt.sr.loaders import validation_loaders  # noqa: E402
from ldt.sr.metrics import MetricTable  # noqa: E402
from ldt.sr.train import build_parser, print_error, resolve_num_gpu  # noqa: E402
from ldt.weights import WeightsError  # noqa: E402


def run_test(opt: dict, root: Path = PROJECT_ROOT) -> MetricTable:
    """Evaluate ``path:pretrain_network_g`` on the option file's test sets; write results/<name>/results.{md,json}."""
    if not opt["path"].get("pretrain_network_g"):
        raise OptionsError("path:pretrain_network_g: the network to test is missing")
    resolve_num_gpu(opt)
    opt.update(dist=False, rank=0, world_size=1)
    out = root / "results" / opt["name"]
    opt["path"].update(results_root=str(out), log=str(out), visualization=str(out / "visualization"))
    model = build_model(opt)
    table = MetricTable(tuple(opt["val"]["metrics"]))
    for name, loader in validation_loaders(opt).items():
        def save_image(path, sr, values, name=name):
            target = out / "visualization" / name / f"{Path(path).stem}_{opt['val']['suffix'] or opt['name']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), tensor2img([sr[0].cpu()]))

        table.add(name, model.evaluate(loader, description=name, on_image=save_image if opt["val"]["save_img"] else None))
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
    except (OptionsError, DatasetError, WeightsError) as err:
        return print_error(err)
    print(table.markdown("camera"), flush=True)
    return 0
