"""BasicSR ``LDTModel``: any method of :mod:`ldt.core.methods` (FT, FT-EMA, LP-FT, DeFT, LDT, LDT-S) on any
registered SR network.

Thin glue: the method object decides what trains and what is deployed; this model builds its network from the
options, hands the method the warm-up / probe loaders it asks for, gives every branch its optimizer, runs one
branch's forward+backward after the other (activations are never held twice), and validates and saves the
*deployed* network. It is an honest BasicSR model: ``basicsr.train.train_pipeline`` can drive it (validation through
:meth:`nondist_validation`, checkpoints, resume); ``Train_pip.py``'s own loop adds source-camera model selection and
a mid-epoch resume position on top.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Mapping
from typing import NoReturn
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ldt.compat import patch_basicsr
from ldt.core import prepare_method
from ldt.core.methods import runs_probe, score_partition
from ldt.core.probe import FailedOnAnotherRank, agree
from ldt.sr import checkpoints
from ldt.sr.options import LDTOptions, method_options, prepare_options, unused_parameters
from ldt.archs.arch_util import head_patterns
from ldt.weights import partial_load, read_weights

patch_basicsr()
from basicsr.archs import build_network  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from basicsr.utils import get_root_logger  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY  # noqa: E402

from ldt.sr.loaders import dataset, probe_batches_per_pass, probe_loader, seeded_loader, world  # noqa: E402
from ldt.sr.metrics import MetricTable, evaluate_loader  # noqa: E402
from ldt.sr.optim import make_optimizer, make_pixel_loss, make_scheduler  # noqa: E402


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN/inf and the options say to stop."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@MODEL_REGISTRY.register()
class LDTModel(BaseModel):
    """One network for testing; for training, the branches of ``ldt:method`` (see the README's methods table)."""

    def __init__(self, opt: dict, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """``weights``: the state of ``path:pretrain_network_g`` where the caller has read and checked it already
        (training's start-up check), so that a large checkpoint is read once; None: read here."""
        # BasicSR's pipeline hands over the raw file; our entry points hand over checked options (checking twice is
        # idempotent and cheap: no data, no weights).
        opt = {**prepare_options(opt, is_train=bool(opt.get("is_train")), source=opt.get("option_file") or "options"),
               **{k: opt[k] for k in ("dist", "rank", "world_size", "auto_resume", "root_path", "option_file") if k in opt}}
        super().__init__(opt)
        self.logger = get_root_logger()
        self.scale = int(opt["scale"])
        self.net_g = build_network(opt["network_g"]).to(self.device)
        self.logger.info(f"Network: {type(self.net_g).__name__}, with parameters: "
                         f"{sum(p.numel() for p in self.net_g.parameters()):,d}")  # BasicSR's print_network line
        load_path = opt["path"]["pretrain_network_g"]
        if load_path:
            state = weights if weights is not None else \
                read_weights(load_path, opt["path"]["param_key_g"], self.net_g, strict=opt["path"]["strict_load_g"],
                             log=self.logger.info)
            self.net_g.load_state_dict(state, strict=opt["path"]["strict_load_g"])
            self.logger.info(f"Loaded {opt['network_g']['type']} weights from {load_path}")
            left_out = None if opt["path"]["strict_load_g"] else partial_load(state, self.net_g, load_path)
            if left_out:
                self.logger.warning(left_out)
        if is_distributed():
            # Ranks seed differently; the probe and warm-up run before DDP would broadcast rank 0's weights.
            for tensor in list(self.net_g.parameters()) + list(self.net_g.buffers()):
                dist.broadcast(tensor.data, src=0)
        self.speed = opt["speed"]
        if self.speed["tf32"]:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.speed["channels_last"]:
            self.net_g = self.net_g.to(memory_format=torch.channels_last)
        self.nan_skips = 0
        self.log_dict: "OrderedDict[str, float]" = OrderedDict()
        if self.is_train:
            self.init_training_settings()

    # ---- set-up ----------------------------------------------------------------------------------------------------
    @property
    def rank0(self) -> bool:
        return self.opt.get("rank", 0) == 0

    def init_training_settings(self) -> None:
        train_opt = self.opt["train"]
        self.cri_pix = make_pixel_loss(train_opt["pixel_opt"]).to(self.device)
        self.net_g.train()
        # Resuming: the state holds the partition and the warmed-up weights, so neither the warm-up nor the probe runs again.
        resume = self.opt["path"]["resume_state"]
        self.probe_set = None
        config = self.method_config = self.probe_config(method_options(self.opt), probes=not resume)
        partition = checkpoints.state_partition(resume) if resume else None
        self.method = prepare_method(
            self.net_g, config, batches=self.batches, loss_fn=self.batch_loss, head_patterns=self.head_patterns(),
            ema_decay=train_opt["ema_decay"], partition=partition, resuming=bool(resume), progress=self.rank0,
            log=self.logger.info, warn=self.logger.warning, no_grad_hint=self.no_grad_hint(),
        )
        if self.method.partition is not None:
            p = self.method.partition
            self.logger.info(f"Partition{' (from the training state)' if resume else ''}: {len(p.stable)} stable, "
                             f"{len(p.unstable)} unstable, {len(p.excluded)} excluded ({p.criterion}, ratio "
                             f"{p.unstable_ratio})")
            if not resume:
                self.save_partition(p, "partition.json")  # a full disk: not the others in DDP's first broadcast
        self.repartition_every = config.repartition_every
        self.setup_branches()
        self.scalers = [torch.amp.GradScaler(self.device.type, enabled=self.speed["autocast"] == "fp16")
                        for _ in self.branches]
        self.schedulers = []
        if train_opt["scheduler"]:
            self.setup_schedulers()

    def save_partition(self, partition, name: str) -> None:
        """Rank 0 writes ``partition`` as ``name`` in the experiment folder (if any), and every rank then knows
        whether it could (:func:`~ldt.core.probe.agree`): its DiskError (a full disk) stopped rank 0 alone, the others
        waiting in the next collective (gloo: a traceback once it exited; NCCL: the group's timeout)."""
        if not self.opt["path"]["experiments_root"]:
            return
        try:
            if self.rank0:
                partition.save(Path(self.opt["path"]["experiments_root"]) / name)
        except Exception as err:  # noqa: BLE001 (re-raised by agree)
            agree(err)
            raise
        agree(None)

    def probe_config(self, config: LDTOptions, probes: bool) -> LDTOptions:
        """``config`` asking for at most the probe batches one pass over ``ldt:probe:dataset`` makes (all ranks
        together), with one warning naming the option when it asks for more. Why: the probe stops at the end of
        that pass anyway (as the official one), and the core only said so after each probe ('the probe loader
        ended after 24 of the 100 batches asked for'), naming no option. ``probes``: the first probe runs (not on
        a resume); the probe's set is then built here once, for every probe of the run."""
        if not runs_probe(config) or not (probes or config.repartition_every):
            return config
        probe, ranks = self.opt["ldt"]["probe"], world()[0]
        self.probe_set = dataset(self.opt, probe["dataset"], phase="train")
        pairs, asked = len(self.probe_set), config.probe.num_batches
        per_pass = probe_batches_per_pass(self.opt, pairs, ranks)
        if not 0 < per_pass < asked:  # none at all is the core's error: the probe received no batch
            return config
        ratio = self.opt["datasets"][probe["dataset"]]["dataset_enlarge_ratio"]
        how = "in file order" if probe["order"] == "file" else f"enlarge ratio {ratio}" if ratio > 1 else ""
        self.logger.warning(
            f"ldt:probe:num_batches: {asked}, but one pass over the {pairs} pairs of datasets:{probe['dataset']}"
            f"{f' ({how})' if how else ''} makes {per_pass} probe batch(es) of {probe['batch_size']}"
            f"{f' over {ranks} ranks' if ranks > 1 else ''}: the probe reads those {per_pass}, as the official probe "
            "stops at the end of its set")
        return config.model_copy(update={"probe": config.probe.model_copy(update={"num_batches": per_pass})})

    def no_grad_hint(self) -> str:
        """What the probe's warning about parameters without gradient tells a user of an option file: no option
        freezes a layer, so it names network_g, whose forward leaves them unused (the warning names the layers)."""
        return (f"network_g ({self.opt['network_g']['type']}): its forward does not use these layers on this data, so "
                "they keep the weights of path:pretrain_network_g (else their initialisation); to train them, make the "
                "forward use them (its *_arch.py, or the network_g options that build them), else remove them")

    def head_patterns(self) -> list[str] | None:
        arch_type = self.opt["network_g"]["type"]
        return head_patterns(arch_type, ARCH_REGISTRY.get(arch_type))

    def batches(self, purpose: str, seed: int) -> torch.utils.data.DataLoader:
        """The warm-up's batches (training set) in an order fixed by ``seed``, or the probe's (``ldt:probe``: fixed by
        ``seed``, or file order with ``ldt:probe:order: file``)."""
        if purpose == "probe":
            return probe_loader(self.opt, seed, self.probe_set)
        return seeded_loader(self.opt, "train", None, seed)

    def setup_branches(self) -> None:
        """Wrap each branch (DDP / compile) and give it a fresh optimizer over its trainable tensors."""
        self.branches = OrderedDict((branch.name, self.wrap(branch)) for branch in self.method.branches())
        fused = self.speed["fused_optimizer"]
        self.optimizers = [make_optimizer(branch.parameters, self.opt["train"]["optim_g"], fused=fused, device=self.device)
                           for branch in self.method.branches()]

    def setup_schedulers(self) -> None:
        self.schedulers = [make_scheduler(optimizer, self.opt["train"]["scheduler"]) for optimizer in self.optimizers]

    def wrap(self, branch) -> nn.Module:
        """DDP (frozen tensors are not synchronised: they change only by the exchange, identically on all ranks).

        DDP registers only the tensors that require grad when it is built. A branch whose trainable set alternates
        (LDT-S) registers all of its parameters, and ``find_unused_parameters`` lets the resting group go without a
        gradient; otherwise the group frozen at wrap time would never have its gradients averaged across ranks.
        """
        module = branch.module
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            flags = {param: param.requires_grad for param in module.parameters()}
            if branch.alternating:
                for param in branch.parameters:
                    param.requires_grad_(True)
            find_unused = branch.alternating or self.trains_unused_parameters(branch)
            module = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)
            for param, flag in flags.items():
                param.requires_grad_(flag)
        if self.speed["compile"]:
            module = torch.compile(module)
        return module

    @functools.cached_property
    def unused_in_forward(self) -> list[str] | None:
        """The network's parameters its forward does not use (traced once, on the meta device), None if unknown."""
        return unused_parameters(self.opt["network_g"])

    def trains_unused_parameters(self, branch) -> bool:
        """Whether ``branch`` trains a parameter the network's forward does not use, or may (the forward cannot be
        traced on the meta device). Why: DDP without ``find_unused_parameters`` stopped its second step in
        'Expected to have finished reduction in the prior iteration ...' (FT trains every parameter; LDT leaves
        those without a probe gradient out of both groups, so its branches train none)."""
        trained = {id(param) for param in branch.parameters}
        unused = None if self.unused_in_forward is None else \
            [name for name, param in branch.module.named_parameters()
             if name in self.unused_in_forward and id(param) in trained]
        if unused is None or unused:
            why = (f"trains {len(unused)} parameter(s) its forward does not use ({', '.join(unused[:3])}"
                   f"{', ...' if len(unused) > 3 else ''})" if unused else
                   f"may train parameters its forward does not use ({self.opt['network_g']['type']} cannot be traced "
                   "on the meta device)")
            self.logger.info(f"DDP: the {branch.name} branch {why}: wrapped with find_unused_parameters")
        return unused is None or bool(unused)

    def repartition(self, current_iter: int) -> None:
        """``ldt:repartition_every``: probe again, re-freeze by the new groups (the official ``Part_per`` block).

        The probe runs on the deployed network, not on a live branch as the official (commented-out) code does with
        ``model_1``: the deployed network is the one validated and saved, while each live branch holds only a smoothed
        copy of one of the two groups. It is a throw-away copy, so a train-mode probe does not touch the branches'
        BatchNorm statistics. Same probe options as the first probe, a different but deterministic data order
        (``ldt:seed + current_iter``; ``ldt:probe:order: file`` reads the same first pairs again); under DDP the
        statistics are all-reduced, so every rank gets the same partition. The branches keep their weights; the
        optimizers are rebuilt over the new trainable tensors with fresh state (Adam moments and step counts restart,
        the learning rate and scheduler position carry over).
        """
        old, config = self.method.partition, self.method_config
        deployed = self.method.deployed()
        new = score_partition(deployed, config, self.batches, self.batch_loss, seed=config.seed + current_iter,
                              progress=self.rank0, log=self.logger.info, warn=self.logger.warning,
                              no_grad_hint=self.no_grad_hint())
        del deployed
        self.apply_partition(new)
        group = {name: kind for kind in ("stable", "unstable", "excluded") for name in getattr(old, kind)}
        moved = [name for kind in ("stable", "unstable", "excluded") for name in getattr(new, kind) if group[name] != kind]
        self.logger.info(
            f"Repartition at iteration {current_iter}: {len(moved)} of {len(new.names)} parameter tensors changed group; "
            f"now {len(new.stable)} stable, {len(new.unstable)} unstable, {len(new.excluded)} excluded"
        )
        self.save_partition(new, f"partition_{current_iter}.json")  # the step's caller turns a failure into one line

    def apply_partition(self, partition) -> None:
        """Re-freeze the branches by ``partition``, re-wrap them (DDP registers parameters at construction) and
        rebuild the optimizers (fresh state) and schedulers, keeping the current learning rates and schedule."""
        self.method.repartition(partition)
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

    # ---- training --------------------------------------------------------------------------------------------------
    def autocast(self):
        mode = self.speed["autocast"]
        if not mode:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last) if self.speed["channels_last"] else tensor

    def batch_loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Pixel loss of one batch (the probe's and the warm-up's loss).

        fp16 autocast is not used here: without a GradScaler small gradients underflow to zero and would bias the
        variance scores; bf16 has float32's range and is kept.
        """
        autocast = self.autocast() if self.speed["autocast"] != "fp16" else contextlib.nullcontext()
        with autocast:
            return self.cri_pix(model(self.to_device(batch["lq"])), self.to_device(batch["gt"])).float()

    def feed_data(self, data: dict) -> None:
        self.lq = self.to_device(data["lq"])
        if "gt" in data:
            self.gt = self.to_device(data["gt"])

    def loss_is_finite(self, loss: torch.Tensor | None, failure: Exception | None = None) -> bool:
        """Whether ``loss`` is finite on every rank (every rank must take the same decision or DDP's backward would
        hang), in one all-reduce that also says whether a rank failed this step before it (its batch, its forward):
        that rank raises ``failure``, the others :class:`~ldt.core.probe.FailedOnAnotherRank`, all before the
        backward's collectives. Without it, the others waited here (gloo: a traceback once the failed rank exited;
        NCCL: the group's timeout)."""
        ok = torch.ones(2, device=self.device)  # [loss finite, no failure]
        if failure is None:
            ok[0] = torch.isfinite(loss.detach()).float()
        else:
            ok[1] = 0
        if is_distributed():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        finite, no_failure = ok.tolist()  # one device-to-host copy a step, as before
        if failure is not None:
            raise failure
        if not no_failure:
            raise FailedOnAnotherRank()
        return bool(finite)

    def fail_step(self, failure: Exception) -> NoReturn:
        """The step that ``failure`` stopped on this rank before its forward (its batch could not be read): raised
        once every rank knows of it, in the first branch's loss all-reduce, the others raising
        :class:`~ldt.core.probe.FailedOnAnotherRank` there. A forward of the previous batch (its output unused) first
        meets the other ranks' in DDP's own collectives before it (its buffers' broadcast, its bucket rebuild at step
        2); the first step of a process has none: its caller agrees on that batch before."""
        module = next(iter(self.branches.values()))
        if is_distributed() and getattr(self, "lq", None) is not None:
            with contextlib.suppress(Exception), self.autocast():
                module(self.lq)
        self.loss_is_finite(None, failure)
        raise failure  # without a process group, raised there already

    def optimize_parameters(self, current_iter: int) -> None:
        """One step of every branch, one after the other, then the method's step (exchange, turn switch, EMA)."""
        losses = OrderedDict()
        for (name, module), optimizer, scaler in zip(self.branches.items(), self.optimizers, self.scalers):
            optimizer.zero_grad(set_to_none=True)
            loss, failure = None, None
            try:
                with self.autocast():
                    loss = self.cri_pix(module(self.lq), self.gt).float()
            except Exception as err:  # noqa: BLE001 (raised by loss_is_finite, once every rank knows of it)
                failure = err
            if not self.loss_is_finite(loss, failure):
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
        self.method.step()
        every = self.repartition_every
        if every and current_iter % every == 0 and current_iter < self.opt["train"]["total_iter"]:
            self.repartition(current_iter)
        self.log_dict = self.reduce_loss_dict(losses) if losses else OrderedDict()

    # ---- deployment and validation ---------------------------------------------------------------------------------
    def deploy_network(self) -> nn.Module:
        """The network that is validated and saved (a fresh copy): the method's deployed network."""
        return self.method.deployed() if self.is_train else self.net_g

    def evaluate(self, loader, *, description: str, on_image=None) -> list[dict[str, float]]:
        """Per-image metrics (``val:metrics``) of the deployed network on one loader."""
        val = self.opt["val"]
        return evaluate_loader(self.deploy_network(), loader, self.device, self.scale, metrics=val["metrics"],
                               tile=val["tile"], overlap=val["tile_overlap"], progress=val["pbar"] and self.rank0,
                               description=description, on_image=on_image)

    def nondist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        """BasicSR's validation hook (its train pipeline calls it for every ``val_*`` set)."""
        name = dataloader.dataset.opt["name"]
        table = MetricTable.of(self.opt["val"]["metrics"])
        self.metric_results = table.add(name, self.evaluate(dataloader, description=f"val {name}"))
        self._initialize_best_metric_results(name)
        for metric, value in self.metric_results.items():
            self._update_best_metric_result(name, metric, value, current_iter)
            if tb_logger is not None:
                tb_logger.add_scalar(f"metrics/{name}/{metric}", value, current_iter)
        self.logger.info(f"Validation {name} at iteration {current_iter}\n{table.markdown('set')}")

    def dist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        if self.rank0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    # ---- checkpoints -----------------------------------------------------------------------------------------------
    def non_finite_tensor(self) -> str | None:
        """The name of a weight (trained, deployed or held by the method) that is NaN/inf, or None."""
        named = [(f"{b.name}:{n}", p) for b in self.method.branches() for n, p in b.module.named_parameters()]
        named += [(f"deployed:{n}", t) for n, t in self.method.deployed_tensors().items() if t.is_floating_point()]
        named += [(f"held[{i}]", t) for i, t in enumerate(self.method.held_tensors())]
        return next((name for name, tensor in named if not torch.isfinite(tensor).all()), None)

    def save(self, epoch: int, current_iter: int, data_position: int = 0, extra: dict | None = None) -> str | None:
        """Deployed weights ``net_g_<iter>.pth`` and the full training state ``<iter>.state``, both atomically;
        returns the state's path. Weights that are not finite are never saved (a resume must start from a sane
        state): that raises :class:`NonFiniteLossError` instead."""
        bad = self.non_finite_tensor()  # on every rank (their weights are the same), so they all stop together
        if bad is not None:
            raise NonFiniteLossError(f"iteration {current_iter}: the weights are not finite ({bad}); nothing was "
                                     "saved")
        if not self.rank0:
            return None
        label = "latest" if current_iter == -1 else current_iter
        checkpoints.save_weights(Path(self.opt["path"]["models"]) / f"net_g_{label}.pth", self.method.checkpoint())
        if current_iter == -1:
            return None
        partition = self.method.partition
        path = Path(self.opt["path"]["training_states"]) / f"{current_iter}.state"
        checkpoints.save_state(path, {
            "epoch": epoch,
            "iter": current_iter,
            "data_position": data_position,
            "method": self.method.state_dict(),
            "partition": partition.to_dict() if partition is not None else None,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scalers": [s.state_dict() for s in self.scalers],
            "nan_skips": self.nan_skips,
            "rng": checkpoints.rng_state(),
            "options": self.opt,  # what a resume compares its own options with
            "extra": extra or {},
        })
        checkpoints.prune(self.opt["path"]["models"], self.opt["path"]["training_states"],
                          self.opt["logger"]["keep_last_checkpoints"])
        return str(path)

    def save_best(self, tag: str) -> None:
        if self.rank0:
            checkpoints.save_weights(Path(self.opt["path"]["models"]) / f"net_g_best{tag}.pth", self.method.checkpoint())

    def resume_training(self, state: dict) -> None:
        if state.get("format") != checkpoints.STATE_FORMAT:
            raise ValueError(f"not an LDT training state (format {state.get('format')!r}, expected "
                             f"{checkpoints.STATE_FORMAT!r})")
        self.method.load_state_dict(state["method"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        for scaler, saved in zip(self.scalers, state["scalers"], strict=True):
            scaler.load_state_dict(saved)
        self.nan_skips = state["nan_skips"]
        checkpoints.set_rng_state(state["rng"])
