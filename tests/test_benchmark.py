"""scripts/benchmark.py runs FT, LDT, LDT-S and the probe on CPU and reports ratios relative to FT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import load_file_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def load_script():
    return load_file_module(SCRIPT, "ldt_benchmark")


def test_benchmark_cpu_smoke(tmp_path, capsys):
    bench = load_script()
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--arch", "safmn_tiny", "--batch-size", "1", "--patch", "16", "--iters", "2",
            "--warmup-iters", "1", "--probe-batches", "2", "--interval", "2", "--json", str(out)]
    returned = bench.main(argv)
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))  # the file holds what main returned

    results = report["results"]
    assert set(results) == {"ft", "ldt", "ldt_s", "probe"}
    for name, row in results.items():
        assert math.isfinite(row["time_s"]) and row["time_s"] > 0, name
        assert math.isfinite(row["peak_bytes"]) and row["peak_bytes"] > 0, name
        assert row["state_bytes"]["weights"] > 0, name
    ft = results["ft"]
    assert ft["time_ratio"] == 1.0 and ft["memory_ratio"] == 1.0
    for name in ("ldt", "ldt_s", "probe"):
        assert results[name]["time_ratio"] == pytest.approx(results[name]["time_s"] / ft["time_s"])
        assert results[name]["memory_ratio"] == pytest.approx(results[name]["peak_bytes"] / ft["peak_bytes"])

    # LDT holds two copies of the weights; its grads and Adam state cover each tensor once, as FT's do.
    param_bytes = report["config"]["param_bytes"]
    ldt, ft_state = results["ldt"]["state_bytes"], ft["state_bytes"]
    assert ldt["grads"] == ft_state["grads"] == param_bytes
    assert ldt["optimizer"] == ft_state["optimizer"]
    assert ldt["weights"] == 2 * ft_state["weights"]
    assert results["ldt_s"]["state_bytes"]["host"] > 0  # LDT-S parks EMA copies on the host
    # The peak covers at least the state (CPU: live torch tensors), so the activations are counted too.
    for name in ("ft", "ldt", "ldt_s"):
        state = results[name]["state_bytes"]
        assert results[name]["peak_bytes"] >= state["weights"] + state["grads"] + state["optimizer"]
    assert report["results"]["probe"]["batches"] == 2
    assert "profile_memory" in report["memory_measure"]

    paper = report["paper"]["ratios"]
    table = capsys.readouterr().out
    for label in ("| FT |", "| LDT |", "| LDT-S", "| probe"):
        assert label in table
    assert f"{paper['LDT']['time']:.2f}×, {paper['LDT']['memory']:.2f}×" in table  # the paper's ratio beside ours


def test_paper_ratios_are_divided_by_the_baseline_row(tmp_path):
    bench = load_script()
    fake = tmp_path / "tables.json"
    fake.write_text(json.dumps({bench.PAPER_TABLE3: {
        "columns": ["train_time_s", "train_memory_GB"], "caption": "x",
        "rows": {"Baseline": [10.0, 4.0], "LDT": [15.0, 6.0], "DeFT": [12.0, 4.0]}}}))
    ratios = bench.paper_ratios(fake)["ratios"]
    assert ratios["LDT"] == {"time": 1.5, "memory": 1.5} and ratios["DeFT"] == {"time": 1.2, "memory": 1.0}
    assert ratios["Baseline"] == {"time": 1.0, "memory": 1.0}
    assert bench.paper_ratios(tmp_path / "missing.json") is None


def test_benchmark_rejects_amp_on_cpu():
    bench = load_script()
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--amp"])
