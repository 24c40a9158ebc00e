"""The gate on real measurements: `accumbench run --device cpu` on plug-in workloads, then
`accumbench compare` on the files it wrote.

tests/workloads/leaky_mlp.py gives three variants of one workload under one name, so their
cases share a case_id: the reference, one that keeps an extra activation alive (memory), one
that does extra matmuls (time).

Timing on a shared CPU: the runs use one intra-op thread on one pinned CPU. With several
threads, a busy neighbour process makes OpenMP threads wait on each other and a step can take
100x longer (measured on a 2-vCPU VM); one pinned thread is slowed only by its share of the
CPU. A throw-away run first takes the process's own warm-up (the first runs of a process are
slower), and the two runs of the noise test follow back to back, so the machine has little time
to change between them.

The noise test is statistical: two runs of the same code differ by what the machine does
between them, and no gate that catches a 15% slowdown can tell a machine that got 15% slower
from code that did. `python benchmarks/throughput_noise.py --runs 200 --threads 1 --pin 0
--in-process` measures this setup: on the 2-vCPU development VM (load 1-2) the gate fired on 2
of 199 consecutive pairs of identical runs (run-to-run medians moved -9% to +15%), where the
rank test alone fired on 66. The test allows one of three pairs to fire, and re-measures a pair
that fires before counting it: a slow spell of the whole VM once fired all three pairs in CI.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records
from accumbench.workloads import load_workload

WORKLOADS = Path(__file__).parent / "workloads" / "leaky_mlp.py"
CASE = "gate-mlp/accumulated/mb16/acc2/amp-none/set_to_none/norm-mean/AdamW(foreach)"
RUN_ARGS = ["--device", "cpu", "--scenario", "accumulated", "--micro-batch", "16", "--accum-steps", "2",
            "--warmup", "2", "--steps", "30"]


@contextmanager
def one_pinned_thread():
    """One intra-op thread on one CPU while the block runs (see the module's docstring)."""
    threads = torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(1)
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def run_variant(factory: str, path: Path) -> Path:
    """`accumbench run` of one variant of the workload into PATH (call inside one_pinned_thread)."""
    result = CliRunner().invoke(
        main, ["run", "--workload", f"{WORKLOADS}:{factory}", *RUN_ARGS, "--out", str(path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Results files: six runs of the reference (three disjoint pairs), one of each defective variant."""
    out = tmp_path_factory.mktemp("measured")
    with one_pinned_thread():
        return {name: run_variant(factory, out / f"{name}.jsonl")
                for name, factory in (("warm-up", "mlp_plain"), ("plain1", "mlp_plain"), ("plain2", "mlp_plain"),
                                      ("plain3", "mlp_plain"), ("plain4", "mlp_plain"), ("plain5", "mlp_plain"),
                                      ("plain6", "mlp_plain"),
                                      ("leaky", "mlp_leaky"), ("slow", "mlp_slow"))}


def compare(baseline: Path, current: Path, *extra: str):
    result = CliRunner().invoke(main, ["compare", str(baseline), str(current), "--json", *extra],
                                catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout) if result.stdout.startswith("{") else result.output


def test_variants_share_the_case_id(measured):
    ids = {name: [r.case_id for r in read_records(path)] for name, path in measured.items()}
    assert all(v == [CASE] for v in ids.values()), ids


def test_cpu_peak_repeats_to_the_byte(measured):
    (a,), (b,) = read_records(measured["plain1"]), read_records(measured["plain2"])
    assert a.peak_allocated == b.peak_allocated


def throughput_gate_fires(baseline: Path, current: Path) -> str | None:
    """The gate's reason when comparing the two runs fails on throughput, else None."""
    code, report = compare(baseline, current)
    (case,) = report["cases"] if isinstance(report, dict) else [None]
    assert case is not None, report
    assert case["memory"]["change"] == 0
    if code != 0 or case["throughput"]["verdict"] == "regression":
        return case["throughput"]["reason"]
    return None


def test_two_runs_of_the_same_case_pass_the_throughput_gate(measured, tmp_path):
    # Pure noise: all samples come from the same code. The gate fires only when the
    # Mann-Whitney test is significant at p < 0.002 AND the median moved by more than 10% AND by
    # more than the runs' own scatter. Measured on a shared 2-core VM it still fired on about 1%
    # of such pairs (a machine that itself slows by 15% between two runs), so the assertion is
    # statistical: of three independent pairs at most one may fire (chance of failing ~3e-4).
    # The pairs share no run: one slow run in a chain (1-2, 2-3, 3-4) fired two pairs at once,
    # which broke the independence the bound rests on (seen in CI: plain3 12% slow).
    # A slow spell of the whole VM breaks it too (seen in CI: all three pairs fired, one +48%), so
    # a pair that fires is measured again, back to back, and counts only if the gate fires again,
    # as it would every time if the harness or the gate made a run of the same code look slower
    # (say, the second run of a process always slower). What a CI user does on a gate that fires.
    fired = []
    for a, b in (("plain1", "plain2"), ("plain3", "plain4"), ("plain5", "plain6")):
        reason = throughput_gate_fires(measured[a], measured[b])
        if reason is None:
            continue
        with one_pinned_thread():
            again = [run_variant("mlp_plain", tmp_path / f"{name}-again.jsonl") for name in (a, b)]
        reason_again = throughput_gate_fires(*again)
        if reason_again is not None:
            fired.append((a, b, reason, reason_again))
    assert len(fired) <= 1, fired


def test_kept_tensor_is_a_memory_regression_naming_the_case(measured):
    result = CliRunner().invoke(main, ["compare", str(measured["plain1"]), str(measured["leaky"])])
    assert result.exit_code == 1
    assert f"  {CASE}: memory: peak +" in result.stdout
    code, report = compare(measured["plain1"], measured["leaky"])
    (case,) = report["cases"]
    assert case["memory"]["verdict"] == "regression", case["memory"]
    # One 16 x HIDDEN float32 activation is kept: at least its bytes more at the peak.
    hidden = load_workload(f"{WORKLOADS}:mlp_leaky").build_model().fc1.out_features
    assert case["memory"]["current"] - case["memory"]["baseline"] >= 16 * hidden * 4
    # The CI self-gate's flags: the memory regression still fails with throughput not gated.
    assert compare(measured["plain1"], measured["leaky"], "--no-throughput-gate")[0] == 1


def test_extra_work_is_a_throughput_regression(measured):
    code, report = compare(measured["plain1"], measured["slow"])
    assert code == 1
    (case,) = report["cases"]
    assert case["throughput"]["verdict"] == "regression", case["throughput"]
    assert case["throughput"]["p_value"] < 0.002 and case["throughput"]["change"] > 0.10
    assert case["memory"]["verdict"] == "same", case["memory"]  # wasted time, not memory
    # Reported but not gated: passes, and says it is slower.
    code, report = compare(measured["plain1"], measured["slow"], "--no-throughput-gate")
    assert code == 0 and report["cases"][0]["verdict"] == "warning", report["cases"][0]
