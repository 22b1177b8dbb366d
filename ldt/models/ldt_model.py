"""BasicSR ``LDTModel``: FT / LP-FT / DeFT / LDT / LDT-S fine-tuning of any registered SR network.

Thin glue around :mod:`ldt.core`: it builds the loaders the probe and warm-up need from the options, hands the
branches to their own optimizers, runs one branch's forward+backward after the other (so activations are never
held twice), validates and saves the *composite* network, and keeps everything needed to resume exactly.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ldt.atomic import atomic_torch_save
from ldt.compat import patch_basicsr
from ldt.core import (
    DualBranch,
    ExchangeConfig,
    Partition,
    SingleBranchLDT,
    partition_by_patterns,
    partition_by_score,
    probe_gradients,
    warmup,
)

patch_basicsr()
from basicsr.archs import build_network  # noqa: E402
from basicsr.data import build_dataset  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.losses import build_loss  # noqa: E402
from basicsr.models import lr_scheduler  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from basicsr.utils import get_root_logger  # noqa: E402
from basicsr.utils.registry import MODEL_REGISTRY  # noqa: E402

from ldt.archs.arch_util import extract_state_dict  # noqa: E402

# Where the "head" of each SR architecture starts: DeFT's unstable group and LP-FT's linear-probe stage.
HEAD_PATTERNS = {
    "MambaIR": [r"^conv_before_upsample\.", r"^upsample\.", r"^conv_last\."],
    "HAT": [r"^conv_before_upsample\.", r"^upsample\.", r"^conv_last\."],
    "SAFMN": [r"^to_img\."],
    "SwinIR": [r"^conv_before_upsample\.", r"^upsample\.", r"^conv_last\."],
    "EDSR": [r"^upsample\.", r"^conv_last\."],
    "MSRResNet": [r"^upconv", r"^conv_hr\.", r"^conv_last\."],
}
STATE_FORMAT = "ldt.sr_training_state/1"


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN/inf and the options say to stop."""


def rng_state() -> dict:
    """Every RNG a training step touches, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@MODEL_REGISTRY.register()
class LDTModel(BaseModel):
    """One network for testing; for training, the branches the ``ldt: method`` needs (see README)."""

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        self.logger = get_root_logger()
        self.scale = int(opt.get("scale", 4))
        self.net_g = build_network(opt["network_g"]).to(self.device)
        load_path = opt["path"].get("pretrain_network_g")
        if load_path:
            checkpoint = torch.load(load_path, map_location="cpu", weights_only=True)
            state = extract_state_dict(checkpoint, opt["path"].get("param_key_g"))
            self.net_g.load_state_dict(state, strict=opt["path"].get("strict_load_g", True))
            self.logger.info(f"Loaded {opt['network_g']['type']} weights from {load_path}")
        if is_distributed():
            # Ranks seed differently; the probe and warm-up run before DDP would broadcast rank 0's weights.
            for tensor in list(self.net_g.parameters()) + list(self.net_g.buffers()):
                dist.broadcast(tensor.data, src=0)
        self.speed = opt.get("speed") or {}
        if self.speed.get("tf32"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.speed.get("channels_last"):
            self.net_g = self.net_g.to(memory_format=torch.channels_last)
        self.nan_skips = 0
        self.log_dict: "OrderedDict[str, float]" = OrderedDict()
        if self.is_train:
            self.init_training_settings()

    # ---- set-up ----------------------------------------------------------------------------------------------------
    def init_training_settings(self) -> None:
        train_opt, ldt_opt = self.opt["train"], self.opt["ldt"]
        self.method = ldt_opt["method"]
        self.cri_pix = build_loss(copy.deepcopy(train_opt["pixel_opt"])).to(self.device)
        self.net_g.train()
        warm = ldt_opt["warmup"]
        if self.method == "lpft" and not warm["steps"]:
            raise ValueError("ldt:method lpft needs ldt:warmup:steps > 0 (the linear-probe stage)")
        resuming = "resume_partition" in self.opt  # set by the training loop: warm-up and probe results are in the state
        if warm["steps"] and not resuming:
            patterns = warm["patterns"] or self.head_patterns()
            self.logger.info(f"Warm-up: {warm['steps']} steps on {patterns}")
            warmup(
                self.net_g,
                self.build_loader("train", batch_size=None, seed=self.opt["manual_seed"]),
                self.batch_loss,
                patterns,
                warm["steps"],
                optimizer_factory=lambda params: torch.optim.Adam(params, lr=warm["lr"]),
                progress=self.opt.get("rank", 0) == 0,
            )
        self.partition = None
        if self.method in ("deft", "ldt", "ldt_s"):
            saved = self.opt.get("resume_partition")
            self.partition = Partition.from_dict(saved) if resuming and saved else self.make_partition()
        if self.partition is not None:
            self.logger.info(
                f"Partition{' (from the training state)' if resuming else ''}: {len(self.partition.stable)} stable, "
                f"{len(self.partition.unstable)} unstable, {len(self.partition.excluded)} excluded "
                f"({self.partition.criterion}, ratio {self.partition.unstable_ratio})"
            )
            if self.opt.get("rank", 0) == 0 and self.opt["path"].get("experiments_root") and not resuming:
                self.partition.save(Path(self.opt["path"]["experiments_root"]) / "partition.json")
        self.repartition_every = ldt_opt.get("repartition_every") or 0
        exchange = ExchangeConfig(**{**ldt_opt["exchange"], **({"dpu": False} if self.method == "deft" else {})})
        if self.method in ("deft", "ldt"):
            self.trainer = DualBranch(self.net_g, self.partition, exchange)
        elif self.method == "ldt_s":
            self.trainer = SingleBranchLDT(self.net_g, self.partition, exchange)
        else:
            self.trainer = None
            for p in self.net_g.parameters():
                p.requires_grad_(True)
        self.setup_branches()
        self.scalers = [
            torch.amp.GradScaler(self.device.type, enabled=self.speed.get("autocast") == "fp16") for _ in self.branches
        ]
        self.schedulers = []
        if train_opt.get("scheduler"):
            self.setup_schedulers()

    def setup_branches(self) -> None:
        """Wrap each branch (DDP / compile) and give it a fresh optimizer over its trainable tensors."""
        if isinstance(self.trainer, DualBranch):
            modules = {"primary": self.trainer.primary, "auxiliary": self.trainer.auxiliary}
            params = {"primary": self.trainer.primary_parameters(), "auxiliary": self.trainer.auxiliary_parameters()}
        elif isinstance(self.trainer, SingleBranchLDT):
            modules, params = {"net": self.net_g}, {"net": self.trainer.trainable_parameters()}
        else:
            modules, params = {"net": self.net_g}, {"net": list(self.net_g.parameters())}
        self.branches = {name: self.wrap(module) for name, module in modules.items()}
        self.optimizers = [self.make_optimizer(params[name]) for name in self.branches]

    def head_patterns(self) -> list[str]:
        patterns = self.opt["ldt"].get("head_patterns") or HEAD_PATTERNS.get(self.opt["network_g"]["type"])
        if not patterns:
            raise ValueError(
                f"no default head for {self.opt['network_g']['type']}: set ldt:head_patterns (regexes of head parameters)"
            )
        return list(patterns)

    def make_partition(self) -> Partition:
        ldt_opt = self.opt["ldt"]
        if self.method == "deft":
            return partition_by_patterns(self.net_g, self.head_patterns(), criterion="deft")
        if ldt_opt.get("partition_file"):
            partition = Partition.load(ldt_opt["partition_file"], self.net_g)
            self.logger.info(f"Partition read from {ldt_opt['partition_file']} ({partition.criterion})")
        elif ldt_opt["criterion"] == "random":
            partition = partition_by_score(None, ldt_opt["unstable_ratio"], "random", seed=ldt_opt["seed"], model=self.net_g)
        else:
            partition = self.probe_partition(self.net_g, seed=ldt_opt["seed"])
        return partition

    def probe_partition(self, network: nn.Module, seed: int) -> Partition:
        """Probe ``network`` with the ``ldt:probe`` options (data order from ``seed``) and split by the criterion."""
        ldt_opt, probe = self.opt["ldt"], self.opt["ldt"]["probe"]
        world = dist.get_world_size() if is_distributed() else 1
        rank = dist.get_rank() if is_distributed() else 0
        # num_batches in total (at least one per rank): the first (num_batches mod world) ranks probe one batch more.
        per_rank = max(1, probe["num_batches"] // world + (rank < probe["num_batches"] % world))
        self.logger.info(f"Probing {probe['num_batches']} batches of {probe['batch_size']} ({per_rank} on this rank)")
        stats = probe_gradients(
            network,
            self.build_loader(probe["dataset"], batch_size=probe["batch_size"], seed=seed),
            self.batch_loss,
            num_batches=per_rank,
            group_by=ldt_opt["group_by"],
            elementwise=ldt_opt["criterion"] == "elementwise_var",
            train_mode=probe["train_mode"],
            progress=self.opt.get("rank", 0) == 0,
        )
        if stats.no_grad:
            self.logger.warning(f"Parameters without gradient in the probe (excluded from both groups): {stats.no_grad}")
        return partition_by_score(stats, ldt_opt["unstable_ratio"], ldt_opt["criterion"], model=network)

    def repartition(self, current_iter: int) -> None:
        """``ldt:repartition_every``: probe again, re-freeze by the new groups (the official ``Part_per`` block).

        The probe runs on the composite, not on a live branch as the official (commented-out) code does with
        ``model_1``: the composite is the network being deployed (validated and saved), while each live branch holds
        only a smoothed copy of one of the two groups. It is a throw-away copy, so a train-mode probe does not touch
        the branches' BatchNorm statistics. Same probe options as the first probe, a different but deterministic data
        order (``ldt:seed + current_iter``); under DDP the statistics are all-reduced, so every rank gets the same
        partition. The branches keep their weights; the optimizers are rebuilt over the new trainable tensors with
        fresh state (Adam moments and step counts restart, the learning rate and scheduler position carry over).
        """
        old = self.partition
        composite = self.trainer.composite()
        new = self.probe_partition(composite, seed=self.opt["ldt"]["seed"] + current_iter)
        del composite
        self.apply_partition(new)
        group = {name: kind for kind in ("stable", "unstable", "excluded") for name in getattr(old, kind)}
        moved = [name for kind in ("stable", "unstable", "excluded") for name in getattr(new, kind) if group[name] != kind]
        self.logger.info(
            f"Repartition at iteration {current_iter}: {len(moved)} of {len(new.names)} parameter tensors changed group; "
            f"now {len(new.stable)} stable, {len(new.unstable)} unstable, {len(new.excluded)} excluded"
        )
        if self.opt.get("rank", 0) == 0 and self.opt["path"].get("experiments_root"):
            new.save(Path(self.opt["path"]["experiments_root"]) / f"partition_{current_iter}.json")

    def apply_partition(self, partition: Partition) -> None:
        """Re-freeze the branches by ``partition``, re-wrap them (DDP registers parameters at construction) and
        rebuild the optimizers (fresh state) and schedulers, keeping the current learning rates and schedule."""
        self.trainer.repartition(partition)
        self.partition = partition
        old_optimizers = self.optimizers
        self.setup_branches()
        if self.schedulers:
            states = [scheduler.state_dict() for scheduler in self.schedulers]
            self.setup_schedulers()
            for scheduler, state in zip(self.schedulers, states, strict=True):
                scheduler.load_state_dict(state)
        for new, old in zip(self.optimizers, old_optimizers, strict=True):
            for new_group, old_group in zip(new.param_groups, old.param_groups, strict=True):
                new_group.update({key: value for key, value in old_group.items() if key != "params"})

    def build_loader(self, dataset_key: str, batch_size: int | None, seed: int) -> torch.utils.data.DataLoader:
        """A shuffled, seeded loader over ``datasets:<dataset_key>`` (split across ranks under DDP)."""
        dataset_opt = copy.deepcopy(self.opt["datasets"][dataset_key])
        dataset_opt.setdefault("phase", "train")
        dataset = build_dataset(dataset_opt)
        world, rank = (dist.get_world_size(), dist.get_rank()) if is_distributed() else (1, 0)
        sampler = EnlargedSampler(dataset, world, rank, ratio=max(1, dataset_opt.get("dataset_enlarge_ratio", 1)))
        sampler.set_epoch(seed)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size or dataset_opt["batch_size_per_gpu"],
            sampler=sampler,
            num_workers=dataset_opt.get("num_worker_per_gpu", 0),
            drop_last=True,
        )

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP (frozen tensors are not synchronised: they change only by the exchange, identically on all ranks).

        DDP registers only the tensors that require grad when it is built. LDT-S trains its two groups in turn on one
        network, so both groups are registered, and ``find_unused_parameters`` lets the resting group go without a
        gradient; otherwise the group frozen at wrap time would never have its gradients averaged across ranks.
        """
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            alternating = isinstance(self.trainer, SingleBranchLDT)
            flags = {param: param.requires_grad for param in module.parameters()}
            if alternating:
                for param in self.trainer.trainable_parameters():
                    param.requires_grad_(True)
            module = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=alternating)
            for param, flag in flags.items():
                param.requires_grad_(flag)
        if self.speed.get("compile"):
            module = torch.compile(module)
        return module

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        optim_opt = copy.deepcopy(self.opt["train"]["optim_g"])
        optim_type = optim_opt.pop("type")
        if optim_type not in ("Adam", "AdamW"):
            raise ValueError(f"train:optim_g:type '{optim_type}' is not supported (Adam, AdamW)")
        if self.speed.get("fused_optimizer"):
            optim_opt["fused" if self.device.type == "cuda" else "foreach"] = True
        return getattr(torch.optim, optim_type)(params, **optim_opt)

    def setup_schedulers(self) -> None:
        scheduler_opt = copy.deepcopy(self.opt["train"]["scheduler"])
        kind = scheduler_opt.pop("type")
        classes = {
            "MultiStepLR": lr_scheduler.MultiStepRestartLR,
            "MultiStepRestartLR": lr_scheduler.MultiStepRestartLR,
            "CosineAnnealingRestartLR": lr_scheduler.CosineAnnealingRestartLR,
        }
        if kind not in classes:
            raise ValueError(f"train:scheduler:type '{kind}' is not supported ({sorted(classes)})")
        self.schedulers = [classes[kind](optimizer, **scheduler_opt) for optimizer in self.optimizers]

    # ---- training --------------------------------------------------------------------------------------------------
    def autocast(self):
        mode = self.speed.get("autocast")
        if not mode:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last) if self.speed.get("channels_last") else tensor

    def batch_loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Pixel loss of one batch (the probe's and the warm-up's loss).

        fp16 autocast is not used here: without a GradScaler small gradients underflow to zero and would bias the
        variance scores; bf16 has float32's range and is kept.
        """
        autocast = self.autocast() if self.speed.get("autocast") != "fp16" else contextlib.nullcontext()
        with autocast:
            return self.cri_pix(model(self.to_device(batch["lq"])), self.to_device(batch["gt"])).float()

    def feed_data(self, data: dict) -> None:
        self.lq = self.to_device(data["lq"])
        if "gt" in data:
            self.gt = self.to_device(data["gt"])

    def loss_is_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).float()
        if is_distributed():  # every rank must take the same decision or DDP's backward would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def optimize_parameters(self, current_iter: int) -> None:
        """One step of every branch, one after the other, then the exchange / phase schedule."""
        losses = OrderedDict()
        for (name, module), optimizer, scaler in zip(self.branches.items(), self.optimizers, self.scalers):
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.cri_pix(module(self.lq), self.gt).float()
            if not self.loss_is_finite(loss):
                message = f"iteration {current_iter}: loss of the {name} branch is {loss.item()}"
                if self.opt["train"]["nan_policy"] == "stop":
                    raise NonFiniteLossError(message + " (train:nan_policy stop; the last saved checkpoint is intact)")
                self.nan_skips += 1
                self.logger.warning(f"{message}: step skipped ({self.nan_skips} so far)")
                if self.nan_skips > self.opt["train"]["max_nan_skips"]:
                    raise NonFiniteLossError(f"more than {self.opt['train']['max_nan_skips']} non-finite losses")
                continue
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses[f"l_pix_{name}" if name != "net" else "l_pix"] = loss.detach()
            del loss  # free this branch's graph before the next branch's forward
        if self.trainer is not None:
            self.trainer.step()
        every = self.repartition_every
        if every and current_iter % every == 0 and current_iter < self.opt["train"]["total_iter"]:
            self.repartition(current_iter)
        self.log_dict = self.reduce_loss_dict(losses) if losses else OrderedDict()

    # ---- deployment ------------------------------------------------------------------------------------------------
    def composite_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        if self.trainer is None:
            return OrderedDict((k, v.detach().clone()) for k, v in self.net_g.state_dict().items())
        return self.trainer.composite_state_dict()

    def deploy_network(self) -> nn.Module:
        """The network that is validated and saved: the composite (LDT/DeFT/LDT-S) or the trained net (FT/LP-FT)."""
        if not self.is_train or self.trainer is None:
            return self.net_g
        return self.trainer.composite()

    def save(self, epoch: int, current_iter: int, data_position: int = 0, extra: dict | None = None) -> None:
        """Composite weights ``net_g_<iter>.pth`` and the full training state ``<iter>.state``, both atomically."""
        if self.opt.get("rank", 0) != 0:
            return
        label = "latest" if current_iter == -1 else current_iter
        params = OrderedDict((k, v.cpu()) for k, v in self.composite_state_dict().items())
        atomic_torch_save({"params": params}, Path(self.opt["path"]["models"]) / f"net_g_{label}.pth")
        if current_iter == -1:
            return
        state = {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "iter": current_iter,
            "data_position": data_position,
            "method": self.method,
            "network": self.net_g.state_dict() if self.trainer is None else None,
            "trainer": self.trainer.state_dict() if self.trainer is not None else None,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scalers": [s.state_dict() for s in self.scalers],
            "nan_skips": self.nan_skips,
            "rng": rng_state(),
            "extra": extra or {},
        }
        atomic_torch_save(state, Path(self.opt["path"]["training_states"]) / f"{current_iter}.state")
        self.prune_checkpoints(self.opt["logger"].get("keep_last_checkpoints", 0))

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` iteration checkpoints (``0``: keep all), after the new one is on disk,
        so long sweeps can save often enough to resume without filling the disk; best/latest weights stay."""
        if keep <= 0:
            return
        states = sorted(Path(self.opt["path"]["training_states"]).glob("*.state"), key=lambda p: int(p.stem))
        for old in states[:-keep]:
            old.unlink()
            (Path(self.opt["path"]["models"]) / f"net_g_{old.stem}.pth").unlink(missing_ok=True)

    def save_best(self, tag: str) -> None:
        if self.opt.get("rank", 0) == 0:
            params = OrderedDict((k, v.cpu()) for k, v in self.composite_state_dict().items())
            atomic_torch_save({"params": params}, Path(self.opt["path"]["models"]) / f"net_g_best{tag}.pth")

    def resume_training(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an LDT training state (format {state.get('format')!r})")
        if state["method"] != self.method:
            raise ValueError(f"the training state is for ldt:method '{state['method']}', the options say '{self.method}'")
        if self.trainer is None:
            self.net_g.load_state_dict(state["network"], strict=True)
        else:
            # The state carries the partition it was trained with (a repartition may have replaced the first one).
            # Our training loop builds the model from it already; a caller that did not (e.g. BasicSR's own train
            # pipeline, which probes afresh) adopts it here, with rebuilt optimizers, before loading their states.
            saved_partition = Partition.from_dict(state["trainer"]["partition"])
            if saved_partition.to_dict() != self.partition.to_dict():
                self.logger.info("Restoring the partition of the training state (it differs from the start-up one)")
                self.apply_partition(saved_partition)
            self.trainer.load_state_dict(state["trainer"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        for scaler, saved in zip(self.scalers, state["scalers"], strict=True):
            scaler.load_state_dict(saved)
        self.nan_skips = state["nan_skips"]
        set_rng_state(state["rng"])
