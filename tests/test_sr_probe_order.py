"""``ldt:probe:order``: the SR probe's patches drawn by the seeded sampler (the default) or read in file order, as the
official probe's unshuffled loader reads them."""

from __future__ import annotations

import pytest

from ldt.sr.options import OptionsError, load_options, run_identity
from tests.sr_fixtures import tiny_cameras, tiny_options, write_options


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def probe_options(data_root, order: str | None, num_batches: int = 2, batch_size: int = 2) -> dict:
    opt = tiny_options(data_root, "order", "ldt")
    opt["ldt"]["probe"] = {"num_batches": num_batches, "batch_size": batch_size,
                           **({"order": order} if order is not None else {})}
    return opt


def probed_paths(opt: dict, tmp_path) -> tuple[list[list[str]], list[str]]:
    """(the GT paths of every batch the probe scored, those of the training set in its order)."""
    from ldt.models.ldt_model import LDTModel
    from ldt.sr.loaders import dataset

    loaded = load_options(write_options(opt, tmp_path), is_train=True)
    loaded.update(dist=False, rank=0, world_size=1)
    seen: list[list[str]] = []
    real_loss = LDTModel.batch_loss

    def recording(self, model, batch):  # the probe's loss (no warm-up here, so only probe batches come through)
        seen.append(list(batch["gt_path"]))
        return real_loss(self, model, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LDTModel, "batch_loss", recording)
        model = LDTModel(loaded)
    assert model.method.partition is not None
    return seen, [pair.hr for pair in dataset(loaded, "train").pairs]


def test_file_order_probes_the_first_pairs_of_the_training_set_in_order(data_root, tmp_path):
    seen, pairs = probed_paths(probe_options(data_root, "file"), tmp_path)
    assert len(pairs) >= 6
    assert seen == [pairs[0:2], pairs[2:4]]  # 2 batches x 2 patches: pairs 0-3, in file order
    # The default draws other patches (or the check above could not tell the orders apart): the seeded sampler's.
    default, _ = probed_paths(probe_options(data_root, None), tmp_path)
    assert [path for batch in default for path in batch] != pairs[:4]


def test_the_default_order_is_the_seeded_sampler_unchanged(data_root, tmp_path):
    """Unset and ``shuffled`` probe the batches the seeded training sampler draws for ``ldt:seed``, as before."""
    from ldt.sr.loaders import seeded_loader
    from ldt.sr.options import prepare_options

    opt = probe_options(data_root, None)
    seen, _ = probed_paths(opt, tmp_path)
    assert probed_paths(probe_options(data_root, "shuffled"), tmp_path)[0] == seen
    prepared = prepare_options(opt, is_train=True)
    assert prepared["ldt"]["probe"]["order"] == "shuffled"
    expected = [list(batch["gt_path"]) for batch in seeded_loader(prepared, "train", 2, seed=prepared["ldt"]["seed"])]
    assert seen == expected[:2]


def test_file_order_ignores_the_seed_and_keeps_a_last_short_batch(data_root, tmp_path):
    """A repartition (seed ``ldt:seed + iteration``) reads the same first pairs again, as the official loader does;
    a set that ends mid-batch gives a shorter last batch (an unshuffled DataLoader does not drop it)."""
    from ldt.sr.loaders import dataset, probe_loader
    from ldt.sr.options import prepare_options

    opt = prepare_options(probe_options(data_root, "file", num_batches=3, batch_size=4), is_train=True)
    pairs = [pair.hr for pair in dataset(opt, "train").pairs]
    batches = [[list(b["gt_path"]) for b in probe_loader(opt, seed)] for seed in (0, 7)]
    assert batches[0] == batches[1] == [pairs[i:i + 4] for i in range(0, len(pairs), 4)]
    assert len(pairs) % 4 and len(batches[0][-1]) == len(pairs) % 4


def probe_share_on(rank: int, world: int, num_batches: int) -> int:
    """``ldt.core.methods.probe_share`` as rank ``rank`` of ``world`` sees it (the process group patched in)."""
    import ldt.core.methods as methods

    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("is_available", True), ("is_initialized", True), ("get_world_size", world),
                            ("get_rank", rank)):
            patch.setattr(methods.dist, name, lambda value=value: value)
        return methods.probe_share(num_batches)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_fewer_probe_batches_than_ranks_are_refused_not_probed_more(world):
    """Every rank probes at least one batch: ``num_batches`` below the world size probed ``world`` batches,
    silently; it is one line naming the option and the world size now, and from ``world`` on the shares add up."""
    from ldt.core import MethodError

    for num_batches in range(1, world):
        with pytest.raises(MethodError) as err:
            probe_share_on(0, world, num_batches)
        assert str(err.value).startswith(f"probe:num_batches: {num_batches} probe batch(es) in all is fewer than "
                                         f"the {world} ranks (world size {world})")
    for num_batches in range(world, 3 * world + 2):
        shares = [probe_share_on(rank, world, num_batches) for rank in range(world)]
        assert sum(shares) == num_batches and min(shares) >= 1


def test_an_sr_run_with_fewer_probe_batches_than_ranks_is_refused_before_it_starts(data_root, tmp_path):
    from ldt.sr.loaders import dataset
    from ldt.sr.train import check_before_start

    opt = load_options(write_options(probe_options(data_root, None, num_batches=2), tmp_path), is_train=True)
    opt.update(dist=False, rank=0, world_size=3)
    with pytest.raises(OptionsError) as err:
        check_before_start(opt, resuming=False, train_set=dataset(opt, "train"), val_loaders={})
    assert str(err.value).startswith("ldt:probe:num_batches: 2 probe batch(es) in all is fewer than the 3 ranks")
    opt["world_size"] = 2
    check_before_start(opt, resuming=False, train_set=dataset(opt, "train"), val_loaders={})


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("num_batches", [1, 5, 6, 7])
def test_ranks_in_file_order_probe_together_what_one_process_would(world, num_batches):
    """Batch ``b`` goes to rank ``b mod world``; each rank's probe share of its batches adds up to the first
    ``num_batches`` batches of one process, each once."""
    from ldt.sr.loaders import file_order_batches

    length, size = 29, 4  # 8 batches, the last one short
    one = file_order_batches(length, size)
    assert one == [list(range(i, min(i + size, length))) for i in range(0, length, size)]
    if num_batches < world:
        return  # refused (test_fewer_probe_batches_than_ranks_are_refused_not_probed_more)
    union = []
    for rank in range(world):
        union += file_order_batches(length, size, world, rank)[:probe_share_on(rank, world, num_batches)]
    assert sorted(union) == sorted(one[:num_batches])


def test_a_bad_order_is_one_line_naming_the_option(data_root, tmp_path):
    with pytest.raises(OptionsError) as err:
        load_options(write_options(probe_options(data_root, "files"), tmp_path), is_train=True)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "ldt:probe:order: must be one of shuffled, file, got 'files' (did you mean 'file'?)"), lines


def test_the_order_joins_the_run_identity_only_when_set(data_root):
    """Runs recorded before the option (which probed in the shuffled order) keep their identity; file order is
    another run; a method that does not probe ignores it."""
    base = run_identity(probe_options(data_root, None))
    assert run_identity(probe_options(data_root, "shuffled")) == base
    assert run_identity(probe_options(data_root, "file")) != base
    assert run_identity(probe_options(data_root, None), resumable=True) == \
        run_identity(probe_options(data_root, "shuffled"), resumable=True)
    ft = {order: run_identity({**probe_options(data_root, order), "ldt": {**probe_options(data_root, order)["ldt"],
                                                                            "method": "ft"}})
          for order in (None, "file")}
    assert ft[None] == ft["file"]


@pytest.mark.parametrize("order", ["shuffled", "file"])
def test_a_probe_that_asks_for_more_than_one_pass_says_so_once_naming_the_option(order, data_root, tmp_path, caplog):
    """The probe stops at the end of one pass over its set (as the official one): one warning naming
    ldt:probe:num_batches and the batches it reads, before the probe, and the core is asked for no more (it said
    only, after the probe, that its loader ended early)."""
    import logging

    from ldt.sr.loaders import dataset, probe_batches_per_pass

    opt = probe_options(data_root, order, num_batches=50)
    prepared = load_options(write_options(opt, tmp_path), is_train=True)
    pairs = len(dataset(prepared, "train"))
    per_pass = (pairs + 1) // 2 if order == "file" else pairs // 2
    assert probe_batches_per_pass(prepared, pairs) == per_pass < 50
    basicsr = logging.getLogger("basicsr")  # BasicSR's root logger does not propagate: listen to it directly
    basicsr.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):  # the core's loggers (ldt.core.*) propagate
            seen, _ = probed_paths(opt, tmp_path)
    finally:
        basicsr.removeHandler(caplog.handler)
    assert len(seen) == per_pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "probe" in r.getMessage()]
    assert warnings == [f"ldt:probe:num_batches: 50, but one pass over the {pairs} pairs of datasets:train"
                        f"{' (in file order)' if order == 'file' else ''} makes {per_pass} probe batch(es) of 2: "
                        f"the probe reads those {per_pass}, as the official probe stops at the end of its set"]
    assert any(r.getMessage().startswith(f"Probing {per_pass} batches") for r in caplog.records)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("pairs, ratio", [(7, 1), (29, 3), (5, 2)])
def test_one_pass_over_ranks_is_what_their_loaders_hold_together(world, pairs, ratio):
    """``probe_batches_per_pass`` over ``world`` ranks is what the capped probe asks the core for: each rank's share
    of it (``ldt.core.methods.probe_share``) is exactly the batches of that rank's loader, in either order."""
    from basicsr.data.data_sampler import EnlargedSampler

    from ldt.sr.loaders import file_order_batches, probe_batches_per_pass

    for order in ("shuffled", "file"):
        opt = {"ldt": {"probe": {"order": order, "batch_size": 2, "dataset": "train"}},
               "datasets": {"train": {"dataset_enlarge_ratio": ratio}}}
        total = probe_batches_per_pass(opt, pairs, world)
        if total < world:
            continue  # refused at start-up (fewer probe batches than ranks)
        for rank in range(world):
            share = probe_share_on(rank, world, total)
            if order == "file":
                held = len(file_order_batches(pairs, 2, world, rank))
            else:
                held = len(EnlargedSampler(list(range(pairs)), world, rank, ratio=ratio)) // 2  # drop_last
            assert share == held, (order, rank, total, held)
