"""FSDP2 accumulation (accumbench.distributed.fsdp): pure helpers, the fake-process-group estimate
in this process, and (slow) 2 gloo ranks on the CPU compared with it to the byte.

One `torch.multiprocessing.spawn` job (module fixture, slow) measures and snapshots everything
the multi-process tests assert.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from accumbench.cases import Case
from accumbench.cli import main
from accumbench.distributed.collectives import CollectiveStats
from accumbench.distributed.fsdp import fsdp_case_id, fsdp_cases, fsdp_units
from accumbench.distributed.fsdp_runner import collective_fields
from accumbench.workloads import load_workload

GPT_TINY = (("size", "tiny"),)
WORLD = 2
MICRO, ACCUM = 4, 3  # accum != world size, so "N reduce-scatters" cannot be the world size by accident
CASE = Case("gpt", "accumulated", MICRO, ACCUM, GPT_TINY, warmup=1, steps=2)


# --- pure helpers --------------------------------------------------------------------------

def test_fsdp_cases_run_accumulated_with_and_without_sync_and_ids_name_the_settings():
    multitask = Case("two-heads", "multitask-combined", 2, 2)
    large = Case("gpt", "large-batch", 4, 1, GPT_TINY)
    kept, skipped = fsdp_cases([CASE, large, multitask], reshard_after_forward=False, wrap="blocks.*")
    assert [(f.case.scenario, f.no_sync) for f in kept] == [("accumulated", True), ("accumulated", False),
                                                           ("large-batch", False)]
    assert skipped == [multitask]
    ids = [fsdp_case_id("gpt-tiny", f, "AdamW(foreach)", 2) for f in kept]
    assert ids[0].endswith("/ws2/fsdp-nosync-keep/wrap=blocks.*")
    assert ids[1].endswith("/ws2/fsdp-sync-keep/wrap=blocks.*")
    default, _ = fsdp_cases([CASE])
    assert fsdp_case_id("gpt-tiny", default[0], "AdamW(foreach)", 2).endswith("/ws2/fsdp-nosync")
    assert len(set(ids)) == 3


def test_fsdp_units_are_the_transformer_blocks_or_the_outermost_matches_of_a_pattern():
    model = load_workload("gpt", dict(GPT_TINY)).build_model()
    assert fsdp_units(model) == ["blocks.0", "blocks.1"]
    assert fsdp_units(model, "blocks.*.mlp") == ["blocks.0.mlp", "blocks.1.mlp"]
    # fnmatch's * crosses dots: 'blocks.*' also matches blocks.0.attn.qkv, inside a block it names.
    assert fsdp_units(model, "blocks.*") == ["blocks.0", "blocks.1"]
    with pytest.raises(ValueError, match="matches no module"):
        fsdp_units(model, "decoder.*")
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    assert fsdp_units(plain) == ["0", "2"]  # top-level children that hold parameters


def test_collective_fields_take_the_max_over_ranks_and_count_per_unit():
    def stats(scatters, seconds):
        return CollectiveStats(6.0, 600.0, seconds, scatters, 300.0, seconds, 3, "wall-clock")

    fields = collective_fields([stats(3.0, 0.1), stats(3.0, 0.3)])
    assert fields["reducescatters_per_step"] == 3.0 and fields["reducescatters_per_unit_per_step"] == 1.0
    assert fields["allgather_time_s_per_step"] == 0.3 and fields["fsdp_units"] == 3
    assert fields["per_rank_reducescatter_time_s_per_step"] == [0.1, 0.3]


@pytest.mark.parametrize("args, message", [
    (["run", "--parallel", "fsdp", "--device", "cpu"], "--parallel fsdp runs on torchrun"),
    (["run", "--device", "cpu", "--reshard-after-forward", "false"], "are FSDP settings"),
    (["estimate", "--parallel", "fsdp"], "needs --world-size W"),
    (["estimate", "--world-size", "2"], "--world-size needs --parallel fsdp"),
    (["estimate", "--parallel", "fsdp", "--world-size", "2", "--workload", "gpt", "--fsdp-wrap", "nothing.*",
      "--micro-batch", "2", "--list"], None),
    (["estimate", "--parallel", "fsdp", "--world-size", "2", "--workload", "gpt", "--fsdp-wrap", "nothing.*",
      "--micro-batch", "2"], "--fsdp-wrap 'nothing.*' matches no module of GPT"),
    (["run", "--nproc-per-node", "2", "--device", "cpu", "--parallel", "fsdp", "--workload", "gpt", "--fsdp-wrap",
      "nothing.*", "--micro-batch", "2"], "--fsdp-wrap 'nothing.*' matches no module of GPT"),
])
def test_fsdp_input_errors_are_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x.jsonl")])
    if message is None:  # --list: ids only, nothing built
        assert result.exit_code == 0, result.output
        ids = result.output.strip().splitlines()[:-1]
        assert ids and all("/ws2/fsdp-" in i and i.endswith("/wrap=nothing.*") for i in ids), result.output
        return
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output


# --- the fake-process-group estimate, in this process ---------------------------------------

def _gradient_bytes(world_size: int) -> tuple[int, int]:
    """(unsharded gradient bytes of the whole model, rank 0's sharded ones, padded as FSDP pads
    dim 0 to a multiple of the world size)."""
    model = load_workload("gpt", dict(GPT_TINY)).build_model()
    unsharded = sharded = 0
    for p in model.parameters():
        unsharded += p.numel() * p.element_size()
        rows = -(-p.shape[0] // world_size)
        sharded += rows * (p.numel() // p.shape[0]) * p.element_size()
    return unsharded, sharded


@pytest.fixture(scope="module")
def fake_estimate():
    from accumbench.distributed.fake_group import estimate_fsdp
    from accumbench.estimate_assumptions import assumptions_for

    fcases, _ = fsdp_cases([CASE])
    return estimate_fsdp(fcases, assumptions_for("cpu"), WORLD)


def test_fake_group_estimate_counts_one_reduce_scatter_per_unit_with_sync_skipped_and_n_without(fake_estimate):
    nosync, sync = fake_estimate
    assert nosync.status == sync.status == "ok", (nosync.error, sync.error)
    assert nosync.world_size == WORLD and nosync.distributed["backend"] == "fake"
    units = nosync.distributed["fsdp_units"]
    assert units == 3  # two blocks and the root
    assert nosync.distributed["reducescatters_per_step"] == units
    assert sync.distributed["reducescatters_per_step"] == ACCUM * units
    # Sync or not, every unit gathers its parameters in each micro-step's forward and backward.
    assert nosync.distributed["allgathers_per_step"] == sync.distributed["allgathers_per_step"] == 2 * ACCUM * units


def test_skipping_sync_costs_the_unsharded_gradients_less_the_sharded_ones(fake_estimate):
    nosync, sync = fake_estimate
    unsharded, sharded = _gradient_bytes(WORLD)
    # Within one LayerNorm's gradients (weight and bias, 2 x d_model fp32): on gpt-tiny the two
    # peaks fall at moments whose live gradients differ by 512 bytes (128 fp32), not yet explained.
    slack = 2 * 64 * 4
    assert 0 <= (unsharded - sharded) - (nosync.peak_allocated - sync.peak_allocated) <= slack
    assert nosync.baseline_allocated == sync.baseline_allocated  # between steps both hold no gradients



@pytest.mark.slow  # an h100 estimate on the fake group: ~2 s on 2 cores
def test_fake_group_estimate_for_a_gpu_kind_predicts_step_time():
    # A GPU device kind adds the step-time prediction's fields to the record (the cpu kind has none).
    from accumbench.distributed.fake_group import estimate_fsdp
    from accumbench.estimate_assumptions import assumptions_for

    fcases, _ = fsdp_cases([CASE])
    for record in estimate_fsdp(fcases[:1], assumptions_for("h100"), WORLD):
        assert record.status == "ok", record.error
        assert record.predicted_step_time_s > 0 and record.measured_steps == 0
        # The job's samples/s, as a run's record sums its ranks': every rank steps as rank 0.
        assert record.samples_per_s == pytest.approx(record.effective_batch / record.predicted_step_time_s)
        # ... with no interconnect time: an upper bound, and the record says so.
        assert any(note.startswith("step time without communication") for note in record.assumptions["applied"])

# --- two gloo ranks (torch.multiprocessing), slow ------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, out_dir: str) -> None:
    from accumbench.distributed import init_distributed, shutdown
    from accumbench.distributed.collectives import CollectiveCounter
    from accumbench.distributed.fsdp import FsdpCase, full_gradients
    from accumbench.distributed.fsdp_runner import FsdpRunner, prepare_fsdp_case
    from accumbench.equivalence.gradients import GradientCapture

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    groups = init_distributed(torch.device("cpu"), timeout_s=60.0)
    workload = load_workload("gpt", dict(GPT_TINY))
    found: dict = {"grads": {}, "scatters": {}}
    for no_sync in (True, False):
        group = groups.new_case_group()
        counter = CollectiveCounter("cpu")
        prepared = prepare_fsdp_case(FsdpCase(CASE, no_sync), workload, groups.context, group, counter)
        model = prepared.state.model
        # An "optimizer" that keeps the gradients: after the step they are the window's sum.
        prepared.state.optimizer = GradientCapture(model.parameters())
        prepared.step()
        found["scatters"][no_sync] = counter.stats(1).reducescatters_per_step
        for p, grad in zip(model.parameters(), prepared.state.optimizer.captured):
            p.grad = grad
        found["grads"][no_sync] = {n: g.clone() for n, g in full_gradients(model, group).items()}
        del prepared, model
        torch.distributed.destroy_process_group(group)
    runner = FsdpRunner(groups)
    fcases, _ = fsdp_cases([CASE])
    found["records"] = [runner.measure(f).to_json() for f in fcases]
    torch.save(found, Path(out_dir) / f"rank{rank}.pt")
    shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run `_rank_worker` on 2 gloo ranks; return each rank's findings."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_rank_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
def test_gloo_reduce_scatters_once_per_unit_with_sync_skipped_and_once_per_micro_step_without(two_ranks):
    for found in two_ranks:
        assert found["scatters"][True] == 3
        assert found["scatters"][False] == 3 * ACCUM
    records = [json.loads(r) for r in two_ranks[0]["records"]]
    nosync, sync = records
    assert nosync["distributed"]["reducescatters_per_unit_per_step"] == 1
    assert sync["distributed"]["reducescatters_per_unit_per_step"] == ACCUM
    assert nosync["distributed"]["reducescatter_time_s_per_step"] > 0


@pytest.mark.slow
def test_gathered_fsdp_gradients_equal_one_process_over_the_global_batch(two_ranks):
    from accumbench.runner import prepare_case

    workload = load_workload("gpt", dict(GPT_TINY))
    from accumbench.distributed.runner import rank_batches

    reference = prepare_case(Case("gpt", "large-batch", MICRO * WORLD * ACCUM, 1, GPT_TINY), workload,
                             torch.device("cpu"))
    # The large batch: the accumulated run's global micro-batches, concatenated.
    global_case = Case("gpt", "accumulated", MICRO * WORLD, ACCUM, GPT_TINY)
    micro, _ = rank_batches(workload, global_case, 0, 1, 0)  # the global micro-batches, same seed
    whole = torch.utils._pytree.tree_map(lambda *xs: torch.cat(xs), *micro)
    model = reference.state.model
    loss = workload.loss(workload.forward(model, whole, None), whole)
    loss.backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    for no_sync in (True, False):
        rank0, rank1 = (found["grads"][no_sync] for found in two_ranks)
        assert rank0.keys() == expected.keys()
        for name, grad in expected.items():
            assert torch.equal(rank0[name], rank1[name]), name
            assert torch.allclose(rank0[name], grad, rtol=1e-4, atol=1e-6), (
                name, (rank0[name] - grad).abs().max().item())


@pytest.mark.slow
def test_gloo_records_and_the_fake_group_estimate_agree_to_the_byte_where_gloo_kept_pace(two_ranks, fake_estimate):
    records = [json.loads(r) for r in two_ranks[0]["records"]]
    unsharded, sharded = _gradient_bytes(WORLD)
    for record in records:
        assert record["status"] == "ok" and record["world_size"] == WORLD
        assert record["distributed"]["parallel"] == "fsdp" and record["distributed"]["backend"] == "gloo"
        assert record["peak_allocated"] == max(record["distributed"]["per_rank_peak_allocated"])
        assert record["samples_per_s"] == pytest.approx(record["effective_batch"] / statistics.median(record["step_times_s"]))
    # The estimate's collectives finish at once. On gloo, a worker thread that finishes a
    # collective late can only free its buffers late, never early: it can add a collective's
    # buffer to a rank's peak, never remove bytes. So the estimate is never above any rank's peak,
    # at most one unit's buffer below it, and equal to it where the threads kept pace. How often
    # they do is the scheduler's: in 6 runs on this 2-core VM one rank's peak was 3,072 B above
    # the estimate on one of the two cases in 3 runs. The test once asked one exact rank per
    # case, and failed (rarely, in CI too) when both ranks were late on the same case.
    buffer = max(sum(p.numel() * p.element_size() for p in load_workload("gpt", dict(GPT_TINY)).build_model()
                     .get_submodule(unit).parameters()) for unit in ("blocks.0", "blocks.1"))
    exact = 0
    for estimate, record in zip(fake_estimate, records):
        assert estimate.case_id == record["case_id"]
        for peak in record["distributed"]["per_rank_peak_allocated"]:
            assert 0 <= peak - estimate.peak_allocated <= buffer
            exact += peak == estimate.peak_allocated
        assert estimate.baseline_allocated == record["baseline_allocated"]
    assert exact >= 1  # to the byte wherever a rank kept pace
    # Skipping the sync keeps the unsharded gradients instead of rank 0's shards, as the estimate says.
    assert 0 <= (unsharded - sharded) - (fake_estimate[0].peak_allocated - fake_estimate[1].peak_allocated) <= 2 * 64 * 4
    for estimate, record in zip(fake_estimate, records):
        assert estimate.case_id == record["case_id"]
        for key in ("allgathers_per_step", "allgather_bytes_per_step", "reducescatters_per_step",
                    "reducescatter_bytes_per_step"):
            assert estimate.distributed[key] == record["distributed"][key], key


# --- report and compare on FSDP records ---------------------------------------------------------

def test_compare_gates_fsdp_collective_counts_exactly():
    from accumbench.gate.checks import IMPROVEMENT, NOT_AVAILABLE, REGRESSION, SAME, CommunicationCheck

    block = {"parallel": "fsdp", "no_sync": True, "fsdp_units": 3, "allgathers_per_step": 18.0,
             "reducescatters_per_step": 3.0}
    check = CommunicationCheck()
    assert check.evaluate(block, block).verdict == SAME
    lost = check.evaluate(block, {**block, "reducescatters_per_step": 9.0})
    assert lost.verdict == REGRESSION and "reducescatters per optimizer step 3 -> 9" in lost.reason
    assert "gradient sync still skipped" in lost.reason
    one_more = check.evaluate(block, {**block, "allgathers_per_step": 19.0})
    assert one_more.verdict == REGRESSION  # exact: a single extra all-gather is a regression
    split = check.evaluate(block, {**block, "fsdp_units": 4, "reducescatters_per_step": 4.0})
    assert split.verdict == REGRESSION and "FSDP units 3 -> 4" in split.reason
    assert check.evaluate({**block, "reducescatters_per_step": 9.0}, block).verdict == IMPROVEMENT
    assert check.evaluate(block, {"parallel": "fsdp", "no_sync": True}).verdict == NOT_AVAILABLE


def test_report_tells_fsdp_sync_apart_and_states_counts_and_memory(fake_estimate):
    from accumbench.records import records_to_frame
    from accumbench.report.communication import communication_table
    from accumbench.report.data import FSDP_NO_SYNC_TEXT, FSDP_SYNC_TEXT, prepare
    from accumbench.report.fsdp import fsdp_figure, fsdp_findings, fsdp_table
    from accumbench.report.units import format_bytes

    frame, _ = prepare(records_to_frame(fake_estimate))
    assert sorted(frame["line"]) == [f"accumulated, micro-batch {MICRO}, {FSDP_SYNC_TEXT}",
                                     f"accumulated, micro-batch {MICRO}, {FSDP_NO_SYNC_TEXT}"]
    assert not communication_table(frame).rows  # the DDP table leaves FSDP records out
    table = fsdp_table(frame)
    assert len(table.rows) == 2
    nosync, sync = fake_estimate
    extra = format_bytes(nosync.peak_allocated - sync.peak_allocated, signed=True)
    (finding,) = fsdp_findings(frame)
    assert "makes 3 reduce-scatters per optimizer step instead of 9" in finding and f"costs {extra} of peak" in finding
    fig = fsdp_figure(frame)
    widths = sorted(bar.get_width() for bar in fig.axes[0].containers[0]) + \
        sorted(bar.get_width() for bar in fig.axes[0].containers[1])
    assert widths == [9.0, 3.0]


# --- plan --world-size -------------------------------------------------------------------------

def test_plan_world_size_must_split_the_effective_batch():
    result = CliRunner().invoke(main, ["plan", "--workload", "gpt", "--effective-batch", "7", "--memory-budget",
                                       "1GiB", "--world-size", "2"])
    assert result.exit_code == 2 and "does not split over --world-size 2" in result.output


@pytest.mark.slow
def test_plan_world_size_picks_per_rank_pairs_from_rank_0_estimates(fake_estimate):
    # Per rank: 12 of 24 samples; the estimate of 4 x 3 (sync skipped) is the fixture's record.
    nosync = fake_estimate[0]
    result = CliRunner().invoke(main, [
        "plan", "--workload", "gpt", "--workload-opt", "size=tiny", "--effective-batch", str(MICRO * ACCUM * WORLD),
        "--world-size", str(WORLD), "--device-kind", "cpu", "--margin", "0", "--json",
        "--memory-budget", str(nosync.peak_allocated)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{"):])
    pairs = {(c["micro_batch"], c["accum_steps"]): c for c in plan["candidates"]}
    assert set(pairs) == {(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)}
    assert pairs[(4, 3)]["predicted_peak"] == nosync.peak_allocated and pairs[(4, 3)]["fits"]
    assert plan["recommended"]["micro_batch"] == MICRO  # the largest that fits: 6 x 2 needs more
    assert not pairs[(6, 2)]["fits"]
