"""Glue that lets PyPI's ``basicsr==1.4.2`` run on current torch/torchvision, and registers our modules into it.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17) at import time.
:func:`patch_basicsr` installs a tiny alias module before basicsr is imported; every entry point of this package that
touches basicsr goes through :func:`import_basicsr`, so users never see that import error.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

_REMOVED_MODULE = "torchvision.transforms.functional_tensor"


def patch_basicsr() -> None:
    """Provide ``torchvision.transforms.functional_tensor`` when torchvision no longer ships it (idempotent)."""
    if _REMOVED_MODULE in sys.modules:
        return
    try:
        importlib.import_module(_REMOVED_MODULE)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    alias = types.ModuleType(_REMOVED_MODULE)
    alias.__doc__ = "Alias created by ldt.compat: torchvision >= 0.17 moved these functions to `functional`."
    alias.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[_REMOVED_MODULE] = alias


def import_basicsr() -> ModuleType:
    """Import basicsr with the compatibility patch applied first."""
    patch_basicsr()
    import basicsr

    return basicsr


def import_registered_modules(package: str, package_file: str, suffix: str) -> list[ModuleType]:
    """Import every ``*<suffix>.py`` beside ``package_file`` so its classes register into basicsr's registries.

    This is the BasicSR convention (``*_arch.py``, ``*_dataset.py``, ``*_model.py``), applied to our own package.
    """
    patch_basicsr()
    folder = Path(package_file).resolve().parent
    return [importlib.import_module(f"{package}.{path.stem}") for path in sorted(folder.glob(f"*{suffix}.py"))]


def basicsr_resume_path(opt: dict) -> str | None:
    """The training state BasicSR's pipeline resumes from: with ``auto_resume`` the newest of
    ``path:training_states`` (below the root the pipeline writes the experiment to; basicsr 1.4.2 looks below the
    working folder, so run elsewhere it started afresh and archived the run), else ``path:resume_state``; None for a
    fresh start. One answer for its resume and for the start-up check."""
    from ldt.sr.checkpoints import iteration_files

    states = iteration_files(opt["path"]["training_states"], ".state") if opt.get("auto_resume") else []
    return str(states[-1]) if states else opt["path"].get("resume_state") or None


def save_the_last_iteration(model: Any, sampler: Any, total_iter: int, save_every: int) -> None:
    """Make ``model`` (built by ``basicsr.train.train_pipeline``) save at iteration ``total_iter`` as the loop saves
    at multiples of ``save_every``: basicsr 1.4.2's loop saves a state only there (its end saves ``net_g_latest``, no
    state), so a run whose length is no multiple lost its last iterations to a resume. The save follows the step,
    where the loop's own saves are, with the epoch the loop is in (``sampler``'s, the training sampler the loop sets
    each epoch)."""
    step = model.optimize_parameters

    def optimize_parameters(current_iter: int, *args: Any, **kwargs: Any) -> None:
        step(current_iter, *args, **kwargs)
        if current_iter == total_iter and current_iter % save_every:
            model.save(sampler.epoch, current_iter)

    model.optimize_parameters = optimize_parameters


def patch_basicsr_train() -> None:
    """Let ``basicsr.train.train_pipeline`` resume on any device, and save its last iteration (idempotent).

    basicsr 1.4.2's ``load_resume_state`` maps every tensor of a training state to ``cuda`` (an error without a GPU,
    and it would move the saved CPU RNG state off the CPU) with ``torch.load``'s default ``weights_only``. This
    replacement finds the state file below the pipeline's root (:func:`basicsr_resume_path`; saying where it looked
    when ``--auto_resume`` finds none), reads it on the CPU with ``weights_only=True`` (the model moves what it
    needs to its device), and names the file when it cannot be read. The model the pipeline builds saves its last
    iteration (:func:`save_the_last_iteration`, given the training sampler the pipeline's loaders were built with).
    """
    patch_basicsr()
    import basicsr.train as pipeline

    if getattr(pipeline.load_resume_state, "ldt_patched", False):
        return
    from ldt.weights import read_checkpoint

    def load_resume_state(opt: dict):
        path = basicsr_resume_path(opt)
        if not path:
            if opt.get("auto_resume"):  # print: BasicSR's logger is set up after this
                print(f"--auto_resume: no training state in {opt['path']['training_states']}; starting afresh",
                      flush=True)
            return None
        opt["path"]["resume_state"] = path
        state = read_checkpoint(path, what="training state")
        pipeline.check_resume(opt, state["iter"])
        return state

    create_loaders, build_model = pipeline.create_train_val_dataloader, pipeline.build_model
    samplers: list = []  # the training sampler of the pipeline whose model is built next

    def create_train_val_dataloader(opt: dict, logger: Any) -> tuple:
        loaders = create_loaders(opt, logger)
        samplers[:] = [loaders[1]]
        return loaders

    def build_pipeline_model(opt: dict) -> Any:
        model = build_model(opt)
        if opt.get("is_train") and samplers:
            save_the_last_iteration(model, samplers.pop(), int(opt["train"]["total_iter"]),
                                    opt["logger"]["save_checkpoint_freq"])
        return model

    load_resume_state.ldt_patched = True
    pipeline.load_resume_state = load_resume_state
    pipeline.create_train_val_dataloader = create_train_val_dataloader
    pipeline.build_model = build_pipeline_model


def _image_paths(data: Any, index: int) -> list[tuple[str, str, str]]:
    """(client key, folder, path) of each image item ``index`` of BasicSR's ``data`` reads."""
    if isinstance(data.paths[index], dict):  # PairedImageDataset
        return [(key, folder, data.paths[index][f"{key}_path"]) for key, folder in (("gt", data.gt_folder),
                                                                                  ("lq", data.lq_folder))]
    return [("lq", data.lq_folder, data.paths[index])]  # SingleImageDataset


def rebuild_image_dataset(module: str, qualname: str) -> Any:
    """An empty instance of the dataset class ``module.qualname``, patched first: what a spawned DataLoader worker
    unpickles (pickle then restores its state), so it reads through :func:`patch_image_datasets` too."""
    patch_image_datasets()
    cls: Any = importlib.import_module(module)
    for name in qualname.split("."):
        cls = getattr(cls, name)
    return cls.__new__(cls)


def patch_image_datasets() -> None:
    """Make BasicSR's ``PairedImageDataset`` and ``SingleImageDataset`` name an image they cannot decode, in this
    process and in any DataLoader worker, forked or spawned (idempotent).

    basicsr 1.4.2's ``imfrombytes`` hands ``cv2.imdecode``'s None to ``.astype``: a PNG or JPEG whose pixel data is
    corrupt behind an intact header and end marker (all the start-up check reads: decoding every image would slow
    the start on DRealSR) stopped ``test.py``, a training or its validation in an ``AttributeError`` naming no file.
    When a read fails, the item's images are decoded again as BasicSR decodes them, and an image that does not decode
    is a :class:`ldt.data.cameras.DatasetError` naming it (torch re-raises a worker's error as that type, which the
    entry points print as one line); any other failure stands as it was. A read that succeeds reads nothing twice.
    The datasets pickle through :func:`rebuild_image_dataset`: a spawned worker (macOS and Windows start workers
    so) imports BasicSR afresh, and without it got BasicSR unpatched, or no BasicSR at all on torchvision >= 0.17."""
    patch_basicsr()
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from basicsr.data.single_image_dataset import SingleImageDataset

    if getattr(SingleImageDataset.__getitem__, "ldt_patched", False):
        return
    import cv2

    from ldt.data.cameras import DatasetError, imdecode

    def patched(read: Any) -> Any:
        def __getitem__(self, index: int) -> dict:
            try:
                return read(self, index)
            except Exception:
                if self.file_client is None:  # it failed before reading any image
                    raise
                on_lmdb = "db_paths" in self.io_backend_opt  # BasicSR's LMDB set-up adds it; the paths are keys
                try:
                    for key, folder, path in _image_paths(self, index):
                        imdecode(self.file_client.get(path, key), f"LMDB {folder} (key {path})" if on_lmdb else path,
                                 cv2.IMREAD_COLOR)
                except DatasetError as undecodable:
                    raise undecodable from None
                raise

        __getitem__.ldt_patched = True
        return __getitem__

    def __reduce_ex__(self, protocol: int) -> tuple:
        cls = type(self)
        return rebuild_image_dataset, (cls.__module__, cls.__qualname__), dict(vars(self))

    for cls in (PairedImageDataset, SingleImageDataset):
        cls.__getitem__ = patched(cls.__getitem__)
        cls.__reduce_ex__ = __reduce_ex__
