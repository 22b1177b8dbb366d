"""The SR training pipeline behind ``Train_pip.py``: options → data → LDTModel → train/validate/save → tables.

Our own loop on BasicSR's building blocks, because basicsr 1.4.2's ``train_pipeline`` maps resume states to CUDA,
relies on ``torch.load`` defaults that changed in torch 2.6, rejects CPU DDP and restarts the epoch on resume.
Here resume continues from the exact sample position (bit-identical on CPU with ``num_worker_per_gpu: 0``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from ldt.atomic import atomic_write_text
from ldt.compat import patch_basicsr
from ldt.options import OptionsError, load_options

patch_basicsr()
import ldt.archs  # noqa: E402,F401  (registers archs)
import ldt.data  # noqa: E402,F401  (registers datasets)
from ldt.data.cameras import DatasetError  # noqa: E402
import ldt.models  # noqa: E402,F401  (registers LDTModel)
from basicsr.data import build_dataloader, build_dataset, worker_init_fn  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import get_root_logger, get_time_str, set_random_seed  # noqa: E402
from ldt.evaluation import MetricTable, evaluate_loader  # noqa: E402
from ldt.models.ldt_model import NonFiniteLossError  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ResumableSampler(EnlargedSampler):
    """BasicSR's epoch-seeded sampler that can start an epoch part-way (to resume at the exact sample)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_parser(description: str, option_kind: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-opt", "--opt", default=None,
        help=f"options YAML: a path, or a bare file name inside options/{option_kind}/",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none", help="'pytorch' under torchrun (DDP)")
    parser.add_argument("--force_yml", nargs="+", default=None, metavar="KEY:SUB=VALUE",
                        help="override options, e.g. ldt:method=ft train:total_iter=1000 (values read as YAML)")
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def init_distributed(opt: dict, launcher: str) -> None:
    """torchrun environment → process group (NCCL on GPUs, gloo on CPU); set rank/world/device options."""
    if launcher == "pytorch" and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and opt["num_gpu"] != 0
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # Rank 0 validates alone while the other ranks wait in the next collective: tiled validation of six camera
        # sets with a large network can outlast the default 10-minute timeout.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    opt["dist"] = dist.is_initialized()
    opt["rank"], opt["world_size"] = (dist.get_rank(), dist.get_world_size()) if opt["dist"] else (0, 1)


def resolve_num_gpu(opt: dict) -> None:
    if opt["num_gpu"] == "auto":
        opt["num_gpu"] = 1 if torch.cuda.is_available() else 0
    if opt["num_gpu"] and not torch.cuda.is_available():
        raise OptionsError(f"num_gpu: {opt['num_gpu']} but CUDA is not available (use num_gpu: 0 or auto)")


def experiment_paths(opt: dict, root: Path) -> None:
    exp = root / "experiments" / opt["name"]
    opt["path"].update(
        experiments_root=str(exp), models=str(exp / "models"), training_states=str(exp / "training_states"),
        log=str(exp), visualization=str(exp / "visualization"),
    )


def latest_state(opt: dict) -> Path | None:
    folder = Path(opt["path"]["training_states"])
    states = sorted(folder.glob("*.state"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    return states[-1] if states else None


def build_val_loaders(opt: dict) -> dict[str, torch.utils.data.DataLoader]:
    loaders = {}
    for phase, dataset_opt in opt["datasets"].items():
        if phase.split("_")[0] in ("val", "test"):
            dataset_opt = {**dataset_opt, "phase": "val", "scale": opt["scale"]}
            dataset = build_dataset(dataset_opt)
            loaders[dataset_opt["name"]] = build_dataloader(dataset, dataset_opt, num_gpu=opt["num_gpu"], dist=False)
    return loaders


def validate(model, loaders: dict, opt: dict, current_iter: int, tb_logger=None, desc: str = "val") -> MetricTable:
    """Evaluate the deployed (composite) network on every validation set; log per set and their mean."""
    val = opt["val"]
    network = model.deploy_network()
    table = MetricTable(tuple(val["metrics"]))
    for name, loader in loaders.items():
        values = evaluate_loader(
            network, loader, model.device, opt["scale"], crop_border=val["crop_border"], tile=val["tile"],
            overlap=val["tile_overlap"], metrics=tuple(val["metrics"]), progress=val["pbar"] and opt["rank"] == 0,
            description=f"{desc} {name}",
        )
        means = table.add(name, values)
        if tb_logger is not None:
            for metric, value in means.items():
                tb_logger.add_scalar(f"metrics/{name}/{metric}", value, current_iter)
    if tb_logger is not None and len(table.rows) > 1:
        for metric, value in table.mean().items():
            tb_logger.add_scalar(f"metrics/mean/{metric}", value, current_iter)
    return table


def selection_set(opt: dict, loaders: dict) -> tuple[str | None, str]:
    """The validation set used for best-checkpoint selection, and the tag of the saved file."""
    selection = opt["val"]["selection"]
    if selection.startswith("oracle:"):
        name = selection.split(":", 1)[1]
        if name not in loaders:
            raise OptionsError(f"val:selection '{selection}': no validation set named '{name}' (have {sorted(loaders)})")
        return name, "_oracle"
    name = opt["val"]["source_set"]
    return (name, "") if name in loaders else (None, "")


def write_results(opt: dict, table: MetricTable, extra: dict) -> str:
    exp = Path(opt["path"]["experiments_root"])
    report = {"name": opt["name"], "method": opt["ldt"]["method"], "arch": opt["network_g"]["type"], **extra,
              "metrics": table.to_dict()}
    (exp / "results.json").write_text(json.dumps(report, indent=1))
    markdown = f"### {opt['name']} ({opt['ldt']['method']}, {opt['network_g']['type']})\n\n" + table.markdown("camera")
    (exp / "results.md").write_text(markdown + "\n")
    return markdown


def train(opt: dict, root: Path = PROJECT_ROOT) -> dict:
    """Run one training described by a validated option dict; return the final metrics report."""
    resolve_num_gpu(opt)
    experiment_paths(opt, root)
    state_path = None
    if opt["path"].get("resume_state"):
        state_path = Path(opt["path"]["resume_state"])
    elif opt.get("auto_resume"):
        state_path = latest_state(opt)
    rank0 = opt["rank"] == 0
    if rank0:
        for key in ("experiments_root", "models", "training_states"):
            Path(opt["path"][key]).mkdir(parents=True, exist_ok=True)
    log_file = Path(opt["path"]["log"]) / f"train_{opt['name'].replace('/', '_')}_{get_time_str()}.log"
    logger = get_root_logger(logger_name="basicsr", log_level=logging.INFO, log_file=str(log_file) if rank0 else None)
    set_random_seed(opt["manual_seed"] + opt["rank"])
    tb_logger = None
    if rank0 and opt["logger"]["use_tb_logger"]:
        from torch.utils.tensorboard import SummaryWriter

        tb_logger = SummaryWriter(log_dir=str(root / "tb_logger" / opt["name"]))

    train_opt = {**opt["datasets"]["train"], "phase": "train", "scale": opt["scale"]}
    train_set = build_dataset(train_opt)
    sampler = ResumableSampler(train_set, opt["world_size"], opt["rank"], train_opt.get("dataset_enlarge_ratio", 1))
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=train_opt["batch_size_per_gpu"],
        sampler=sampler,
        num_workers=train_opt.get("num_worker_per_gpu", 0),
        drop_last=True,
        pin_memory=train_opt.get("pin_memory", False),
        worker_init_fn=partial(worker_init_fn, num_workers=train_opt.get("num_worker_per_gpu", 0), rank=opt["rank"],
                               seed=opt["manual_seed"]),
        # A private generator: creating a loader iterator must not consume the global RNG (stochastic depth uses
        # it), or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(opt["manual_seed"]),
    )
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        raise OptionsError(f"datasets:train has {len(train_set)} samples, fewer than one batch per rank")
    val_loaders = build_val_loaders(opt) if rank0 else {}
    select_name, best_tag = selection_set(opt, val_loaders) if rank0 else (None, "")

    state = None
    if state_path is not None:
        # Read once, on the CPU (the model copies every tensor onto its device). The model skips its warm-up and probe
        # when resuming: the state holds their result (and later repartitions).
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        opt["resume_partition"] = (state.get("trainer") or {}).get("partition")
    model = build_model(opt)
    total_iter = int(opt["train"]["total_iter"])
    current_iter, epoch, position, best = 0, 0, 0, {"value": -math.inf, "iter": -1}
    history: list[dict] = []  # validation tables so far; kept in training states so curves survive a resume
    # The best score is also kept beside net_g_best: validation runs more often than states are saved, and a best
    # found after the last state must not be overwritten by a worse network after a resume.
    best_file = Path(opt["path"]["experiments_root"]) / f"best{best_tag}.json"
    if state is not None:
        model.resume_training(state)
        current_iter, epoch, position = state["iter"], state["epoch"], state["data_position"]
        best = state["extra"].get("best", best)
        if best_file.is_file():
            recorded = json.loads(best_file.read_text())
            if recorded["value"] > best["value"]:
                best = recorded
        history = state["extra"].get("history", [])
        logger.info(f"Resumed from {state_path}: iteration {current_iter}, epoch {epoch}, batch {position}")
        state = None  # the model holds its own copies now; do not keep the file's tensors through training

    last_validated: tuple[int, MetricTable] | None = None
    start = time.time()
    bar = None
    if rank0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_iter, initial=current_iter, desc=f"train {opt['ldt']['method']}", unit="it", dynamic_ncols=True)
    val_freq, save_freq, print_freq = opt["val"]["val_freq"], opt["logger"]["save_checkpoint_freq"], opt["logger"]["print_freq"]
    while current_iter < total_iter:
        sampler.set_epoch(epoch)
        sampler.skip = position * loader.batch_size
        for batch in loader:
            current_iter += 1
            position += 1
            model.update_learning_rate(current_iter, warmup_iter=opt["train"]["warmup_iter"])
            model.feed_data(batch)
            try:
                model.optimize_parameters(current_iter)
            except NonFiniteLossError as err:
                logger.error(str(err))
                raise
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in model.get_current_log().items()})
            if rank0 and current_iter % print_freq == 0:
                logs = model.get_current_log()
                logger.info(f"iter {current_iter:,d} lr {model.get_current_learning_rate()[0]:.2e} "
                            + " ".join(f"{k}: {v:.4e}" for k, v in logs.items()))
                if tb_logger is not None:
                    for key, value in logs.items():
                        tb_logger.add_scalar(f"losses/{key}", value, current_iter)
            # The last iteration is always validated, so it competes for the best checkpoint too.
            if rank0 and val_loaders and (current_iter % val_freq == 0 or current_iter == total_iter):
                table = validate(model, val_loaders, opt, current_iter, tb_logger)
                history.append({"iter": current_iter, **table.to_dict()})
                last_validated = (current_iter, table)
                logger.info(f"validation at iter {current_iter}\n{table.markdown('camera')}")
                if select_name is not None and table.rows[select_name]["psnr"] > best["value"]:
                    best = {"value": table.rows[select_name]["psnr"], "iter": current_iter, "set": select_name}
                    model.save_best(best_tag)
                    atomic_write_text(best_file, json.dumps(best))
            if current_iter % save_freq == 0:
                model.save(epoch, current_iter, position, extra={"best": best, "history": history})
            if current_iter >= total_iter:
                break
        else:
            epoch, position = epoch + 1, 0
    if bar is not None:
        bar.close()
    seconds = time.time() - start
    model.save(epoch, -1)
    report: dict = {}
    if rank0:
        if last_validated is not None and last_validated[0] == current_iter:
            table = last_validated[1]
        else:  # resumed at the end, or no validation sets
            table = validate(model, val_loaders, opt, current_iter, tb_logger, desc="final") if val_loaders else MetricTable()
        report = {"iterations": current_iter, "train_seconds": seconds, "best": best, "history": history,
                  "nan_skips": model.nan_skips}
        markdown = write_results(opt, table, report)
        report["metrics"] = table.to_dict()
        logger.info(f"Training done in {seconds:.1f} s\n{markdown}")
        print(markdown, flush=True)
    if tb_logger is not None:
        tb_logger.close()
    if dist.is_initialized():
        dist.barrier()  # ranks leave together: a peer tearing down while rank 0 still writes can abort it (gloo)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "train")
    parser.add_argument("--auto_resume", action="store_true", help="resume from the latest training state of this experiment")
    args = parser.parse_args(argv)
    if args.opt is None:
        parser.error("-opt is required (Train_pip.py without arguments runs the demo)")
    try:
        opt = load_options(args.opt, is_train=True, overrides=args.force_yml)
        opt["auto_resume"] = args.auto_resume
        init_distributed(opt, args.launcher)
        train(opt)
    except (OptionsError, DatasetError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
