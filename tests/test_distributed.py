"""DDP accumulation (accumbench.distributed): 2 CPU ranks with gloo on the smoke workload.

One `torch.multiprocessing.spawn` job (module fixture) measures and snapshots everything the
multi-process tests assert; the end-to-end test launches `accumbench run --nproc-per-node 2`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from accumbench.cases import Case, case_id
from accumbench.cli import main
from accumbench.distributed import (
    CommStats,
    DdpCase,
    DistributedError,
    RankResult,
    context_from_env,
    ddp_case_id,
    ddp_cases,
    ddp_loss_weights,
    failed_result,
    hand_back_exit_code,
    launch_env,
    merge_results,
    shard_batch,
    timeout_from_env,
    torchrun_command,
)
from accumbench.records import read_records
from accumbench.workloads import load_workload

GPT_TINY = (("size", "tiny"),)
WORLD = 2
MICRO, ACCUM = 2, 3  # accum != world size, so "N all-reduces" cannot be the world size by accident


# --- pure helpers --------------------------------------------------------------------------

def test_ddp_cases_runs_accumulated_with_and_without_no_sync_and_skips_multitask():
    cases = [Case("gpt", "large-batch", 8), Case("gpt", "accumulated", 2, 4),
             Case("two-models", "multitask-combined", 4, 2)]
    kept, skipped = ddp_cases(cases)
    assert [(d.case.scenario, d.no_sync) for d in kept] == [
        ("large-batch", False), ("accumulated", True), ("accumulated", False)]
    assert skipped == [cases[2]]
    assert kept[1].label().endswith("ddp-nosync") and kept[2].label().endswith("ddp")


def test_ddp_case_ids_name_world_size_and_no_sync_and_never_collide_with_single_process():
    case = Case("gpt", "accumulated", 2, 4, GPT_TINY)
    single = case_id("gpt-tiny", case, "AdamW(foreach)")
    ids = {ddp_case_id("gpt-tiny", DdpCase(case, ns), "AdamW(foreach)", ws)
           for ns in (True, False) for ws in (1, 2)}
    assert len(ids) == 4 and single not in ids
    assert ddp_case_id("gpt-tiny", DdpCase(case, True), "AdamW(foreach)", 2) == single + "/ws2/ddp-nosync"
    assert ddp_case_id("gpt-tiny", DdpCase(case, False), "AdamW(foreach)", 1) == single + "/ddp-sync"


def test_shard_batch_gives_each_rank_its_own_copy_of_its_slice():
    batch = (torch.arange(12).reshape(6, 2), {"labels": torch.arange(6)}, "meta", torch.tensor(1.0))
    shards = [shard_batch(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([s[0] for s in shards]), batch[0])
    assert torch.equal(shards[1][1]["labels"], torch.tensor([2, 3]))
    assert shards[2][2] == "meta" and shards[0][3].item() == 1.0
    # a copy, not a view: a rank must not keep the whole global batch alive
    assert shards[0][0].untyped_storage().data_ptr() != batch[0].untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="cannot shard a batch tensor of 6 rows over 4 ranks"):
        shard_batch(batch, 0, 4)


def test_token_weights_make_every_valid_token_of_the_global_batch_weigh_the_same():
    workload = load_workload("gpt", {"size": "tiny", "padded": True})
    generator = torch.Generator().manual_seed(0)
    global_batches = [workload.make_batch(4 * WORLD, generator) for _ in range(3)]
    weights = {r: ddp_loss_weights(workload, global_batches, [shard_batch(b, r, WORLD) for b in global_batches],
                                   "token", WORLD) for r in range(WORLD)}
    counts = {r: [workload.count_loss_elements(shard_batch(b, r, WORLD)) for b in global_batches]
              for r in range(WORLD)}
    total = sum(sum(c) for c in counts.values())
    # DDP averages over ranks: rank r's micro-step i then weighs count(r, i) / total tokens.
    for r in range(WORLD):
        for i in range(3):
            assert weights[r][i] / WORLD == pytest.approx(counts[r][i] / total)
    assert ddp_loss_weights(workload, global_batches, global_batches, "mean", WORLD) == [1 / 3] * 3


def _ok(rank, peak, times, calls, seconds):
    return RankResult(rank=rank, optimizer="AdamW(foreach)", parameters=10, trainable_parameters=4, flops=100,
                      peak_allocated=peak,
                      first_step_peak_allocated=peak + 1, baseline_allocated=peak // 2, breakdown={"grads": rank},
                      step_times_s=times, comm=CommStats(calls, 1, seconds, "wall-clock"))


def test_merge_results_takes_memory_max_over_ranks_and_the_jobs_throughput_at_its_slowest_ranks_pace():
    results = [_ok(0, 1000, (0.1, 0.2, 0.1), 4.0, 0.01), _ok(1, 1500, (0.2, 0.1, 0.3), 4.0, 0.03)]
    merged = merge_results(results, effective_batch_per_rank=8, tokens_per_sample=16, device_name="cpu", amp="none")
    assert merged["status"] == "ok"
    assert merged["peak_allocated"] == 1500 and merged["first_step_peak_allocated"] == 1501
    assert merged["breakdown"] == {"grads": 1}  # the breakdown of the rank with the max peak
    assert merged["step_times_s"] == (0.2, 0.2, 0.3)  # per step, the slowest rank
    # Both ranks' samples per median step of the slowest rank, not each rank's own rate summed
    # (8 / 0.1 + 8 / 0.2 = 120): a synchronous job goes at its slowest rank's pace.
    assert merged["samples_per_s"] == pytest.approx(2 * 8 / 0.2)
    assert merged["tokens_per_s"] == pytest.approx(16 * 2 * 8 / 0.2)
    assert merged["distributed_stats"]["per_rank_samples_per_s"] == pytest.approx([8 / 0.1, 8 / 0.2])
    assert merged["flops_per_step"] == 200
    assert (merged["parameters"], merged["trainable_parameters"]) == (10, 4)  # as a single-process record
    stats = merged["distributed_stats"]
    assert stats["per_rank_peak_allocated"] == [1000, 1500]
    assert stats["allreduces_per_step"] == 4.0 and stats["allreduces_per_bucket_per_step"] == 4.0
    assert stats["allreduce_time_s_per_step"] == 0.03


def test_merge_results_names_the_rank_that_failed_not_the_one_left_waiting():
    waiting = failed_result(0, RuntimeError("[gloo/pair.cc:78] Timed out waiting 3000ms for recv operation"))
    oom = failed_result(1, RuntimeError("CPU: can't allocate memory: you tried to allocate 1 TB"))
    assert waiting.collective and waiting.status == "error"
    assert not oom.collective and oom.status == "oom"
    merged = merge_results([waiting, oom], 8, None, "cpu", "none")
    assert merged["status"] == "oom"
    assert merged["error"].startswith("rank 1: RuntimeError: CPU: can't allocate memory")
    assert merged["error"].endswith("(rank 0 gave up waiting for it)")
    both = merge_results([failed_result(0, ValueError("bad")), failed_result(1, ValueError("bad"))], 8, None,
                         "cpu", "none")
    assert both == {"status": "error", "error": "rank 0: ValueError: bad (rank 1 failed too)",
                    "traceback": "ValueError: bad\n"}  # the failing rank's traceback (none: never raised)
    # DDP's advice for unused parameters names a constructor argument the user cannot pass here.
    unused = failed_result(0, RuntimeError("Expected to have finished reduction in the prior iteration before "
                                           "starting a new one. ... passing the keyword argument "
                                           "`find_unused_parameters=True` to DistributedDataParallel, and by"))
    assert unused.error.startswith("RuntimeError: some parameters got no gradient in the step")
    assert "--freeze PATTERN" in unused.error


def test_context_outside_torchrun_says_how_to_launch():
    with pytest.raises(DistributedError, match="runs under torchrun .*--nproc-per-node N"):
        context_from_env(torch.device("cpu"), environ={})
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    context = context_from_env(torch.device("cpu"), 5.0, environ=env)
    assert (context.rank, context.world_size, context.backend, context.is_writer) == (1, 2, "gloo", False)


def test_timeout_comes_from_the_environment():
    assert timeout_from_env({}) == 300.0
    assert timeout_from_env({"ACCUMBENCH_DIST_TIMEOUT": "2.5"}) == 2.5
    for text in ("soon", "0.001", "-1"):  # a tiny timeout fails setting up the first case's group
        with pytest.raises(DistributedError, match=f"must be a number of seconds, at least 1, got '{text}'"):
            timeout_from_env({"ACCUMBENCH_DIST_TIMEOUT": text})


def test_launcher_runs_torchrun_standalone_and_shares_the_cpu_cores():
    command = torchrun_command(2, ["--device", "cpu"], python="py")
    assert command == ["py", "-m", "accumbench.distributed.torchrun", "--standalone", "--nproc-per-node=2", "-m",
                       "accumbench", "run", "--distributed", "--device", "cpu"]
    assert launch_env(2, "cpu", {})["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert launch_env(2, "cpu", {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in launch_env(2, "cuda", {})


def test_a_sigterm_for_the_launcher_stops_torchrun_before_the_launcher_lets_go(tmp_path, monkeypatch):
    # A scheduler's SIGTERM for the launcher alone left torchrun and its ranks writing to the
    # results file after the launcher released its lock; it is passed on and waited for.
    import signal
    import threading
    import time

    import accumbench.distributed.launch as launch

    marker, ready = tmp_path / "stopped", tmp_path / "ready"
    child = textwrap.dedent(f"""
        import signal, sys, time
        def stop(*_):
            time.sleep(0.3)  # still running when the launcher would have returned
            open({str(marker)!r}, "w").write("stopped")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(30)
    """)
    monkeypatch.setattr(launch, "torchrun_command", lambda n, args: [sys.executable, "-c", child])
    before = signal.getsignal(signal.SIGTERM)

    def terminate_when_ready():
        for _ in range(300):  # the child's handler is in place once it wrote `ready`
            if ready.exists():
                break
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate_when_ready)
    sender.start()
    code = launch.launch_torchrun(2, [], "cpu")
    sender.join()
    assert code == 128 + signal.SIGTERM and marker.read_text() == "stopped"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("codes, expected, said", [({1: 2, 0: -15}, 2, ""), ({1: 1, 0: -15}, 1, "rank 1 exited with code 1"),
                                                  ({0: -9}, -9, "rank 0 exited with code -9")])
def test_torchrun_wrapper_ends_a_failed_rank_in_one_line(monkeypatch, capsys, codes, expected, said):
    # A rank that stopped on bad input (exit 2, having said why) makes the job exit 2; any other
    # failure is named in one line, never torchrun's forty-line report.
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from accumbench.distributed import torchrun

    def fail(argv):
        raise ChildFailedError("accumbench", {rank: ProcessFailure(rank, 100 + rank, code, "")
                                              for rank, code in codes.items()})

    monkeypatch.setattr(torch.distributed.run, "main", fail)
    code = torchrun.main([])
    assert code == (expected if expected > 0 else 1)
    err = capsys.readouterr().err
    assert (said in err) if said else err == ""


def test_ranks_hand_the_exit_code_to_the_launcher(tmp_path):
    exit_file = tmp_path / "code"
    env = {"ACCUMBENCH_DDP_EXIT_FILE": str(exit_file)}
    assert hand_back_exit_code(1, is_writer=False, environ=env) == 0 and not exit_file.exists()
    assert hand_back_exit_code(1, is_writer=True, environ=env) == 0 and exit_file.read_text() == "1\n"
    assert hand_back_exit_code(1, is_writer=True, environ={}) == 1


def test_relaunch_copies_the_flags_given_and_resolves_the_device():
    from accumbench.cli.ddp import relaunch_args
    from accumbench.cli.run import run

    ctx = run.make_context("run", ["--nproc-per-node", "2", "--workload", "gpt", "--workload-opt", "size=tiny",
                                   "--workload-opt", "padded=true", "--zero-grads", "--micro-batch", "2",
                                   "--resume", "--out", "x.jsonl"])
    assert relaunch_args(ctx, "cpu") == [
        "--device", "cpu", "--workload", "gpt", "--workload-opt", "size=tiny", "--workload-opt", "padded=true",
        "--micro-batch", "2", "--zero-grads", "--out", "x.jsonl", "--resume"]


# --- CLI input errors (no processes) ---------------------------------------------------------

def _cli(args, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner().invoke(main, ["run", *args])


@pytest.mark.parametrize("args, message", [
    (["--distributed"], "error: --distributed runs under torchrun"),
    (["--distributed", "--nproc-per-node", "2"], "error: pass either --nproc-per-node N"),
    (["--nproc-per-node", "2", "--workload", "two-models"], "error: DDP runs the large-batch and accumulated"),
    (["--nproc-per-node", "2", "--workload", "nope"], "error: unknown workload 'nope'"),
])
def test_distributed_input_errors_are_one_line_and_exit_2(args, message, monkeypatch):
    result = _cli(["--device", "cpu", *(["--workload", "mlp"] if "--workload" not in args else []), *args],
                  monkeypatch)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def test_nproc_per_node_refuses_a_results_file_it_would_append_to(tmp_path, monkeypatch):
    out = tmp_path / "old.jsonl"
    out.write_text("{}\n")
    result = _cli(["--device", "cpu", "--workload", "mlp", "--nproc-per-node", "2", "--out", str(out)], monkeypatch)
    assert result.exit_code == 2 and "already holds results; pass --resume" in result.output


def test_nproc_per_node_list_shows_the_ddp_case_ids_without_launching(monkeypatch):
    result = _cli(["--device", "cpu", "--workload", "mlp", "--micro-batch", "4", "--accum-steps", "1,2",
                   "--nproc-per-node", "2", "--list"], monkeypatch)
    assert result.exit_code == 0, result.output
    ids = [line for line in result.output.splitlines() if line.startswith("mlp-tiny/")]
    assert [i.split("/", 3)[1:3] + i.rsplit("/", 2)[1:] for i in ids] == [
        ["large-batch", "mb4", "ws2", "ddp-sync"], ["large-batch", "mb8", "ws2", "ddp-sync"],
        ["accumulated", "mb4", "ws2", "ddp-nosync"], ["accumulated", "mb4", "ws2", "ddp-sync"]]
    assert "4 case(s) at world size 2" in result.output


# --- two gloo ranks (torch.multiprocessing) ----------------------------------------------------

FAILING_PLUGIN = textwrap.dedent('''
    """Test plug-in: gpt tiny whose loss raises on rank 1 only, while rank 0 waits in an all-reduce."""
    import dataclasses, os
    from accumbench.workloads import load_workload

    def build():
        base = load_workload("gpt", {"size": "tiny"})
        def loss(output, batch):
            if os.environ["RANK"] == "1":
                raise ValueError("rank 1 cannot go on")
            return base.loss(output, batch)
        return dataclasses.replace(base, name="failing-gpt", loss=loss)

    def build_fails():
        base = load_workload("gpt", {"size": "tiny"})
        def build_model():
            if os.environ["RANK"] == "1":
                raise ValueError("rank 1 has no checkpoint")
            return base.build_model()
        return dataclasses.replace(base, name="unbuildable-gpt", build_model=build_model)
''')


class GradSnapshot:
    """A phase observer that copies the gradients when the optimizer step starts (i.e. after
    the whole accumulation and, under DDP, after the all-reduce)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.grads: dict[str, torch.Tensor] | None = None

    def phase(self, name, micro_step) -> None:
        if name == "optimizer" and self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in self.module.named_parameters()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, port: int, out_dir: str, plugin: str) -> None:
    from accumbench.distributed import (
        AllReduceCounter,
        DistributedRunner,
        init_distributed,
        prepare_ddp_case,
        shutdown,
    )

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    groups = init_distributed(torch.device("cpu"), timeout_s=2.0)  # the failing case waits this long
    workload = load_workload("gpt", {"size": "tiny"})
    case = Case("gpt", "accumulated", MICRO, ACCUM, GPT_TINY, warmup=1, steps=2)
    found: dict = {"grads": {}, "calls": {}}
    for no_sync in (True, False):
        group = groups.new_case_group()
        counter = AllReduceCounter(group, "cpu")
        prepared = prepare_ddp_case(DdpCase(case, no_sync), workload, groups.context, group, counter,
                                    bucket_cap_mb=100)  # one bucket: counts are 1 and N exactly
        snapshot = GradSnapshot(prepared.state.model.module)
        prepared.state.observer = snapshot
        calls = []
        for _ in range(2):  # the first step, then one after DDP rebuilt its buckets
            counter.reset()
            prepared.step()
            calls.append((counter.calls, len(counter.bucket_ids)))
        found["grads"][no_sync] = snapshot.grads
        found["calls"][no_sync] = calls
        torch.distributed.destroy_process_group(group)
    runner = DistributedRunner(groups, bucket_cap_mb=100)
    found["records"] = [runner.measure(DdpCase(case, ns)).to_json() for ns in (True, False)]
    failing = Case(f"{plugin}:build", "large-batch", 2, 1, warmup=1, steps=1)
    after = Case("gpt", "large-batch", 2, 1, GPT_TINY, warmup=1, steps=1)
    found["after_failure"] = [runner.measure(DdpCase(c)).to_json() for c in (failing, after)]
    # A rank that cannot build the model: the others hear of it before DDP's first broadcast,
    # not after the collective timeout (30 s here).
    patient_context = dataclasses.replace(groups.context, timeout_s=30.0)
    patient = DistributedRunner(dataclasses.replace(groups, context=patient_context))
    unbuildable = Case(f"{plugin}:build_fails", "large-batch", 2, 1, warmup=1, steps=1)
    started = time.perf_counter()
    found["unbuildable"] = [patient.measure(DdpCase(c)).to_json() for c in (unbuildable, after)]
    found["unbuildable_s"] = time.perf_counter() - started
    torch.save(found, Path(out_dir) / f"rank{rank}.pt")
    shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run `_rank_worker` on 2 gloo ranks; return each rank's findings."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    plugin = out / "failing_plugin.py"
    plugin.write_text(FAILING_PLUGIN)
    mp.spawn(_rank_worker, args=(_free_port(), str(out), str(plugin)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow  # the two_ranks fixture spawns two gloo ranks: ~9 s on 2 cores (.ci/run's slow step runs it)
def test_no_sync_all_reduces_once_per_optimizer_step_and_without_it_once_per_micro_step(two_ranks):
    for found in two_ranks:
        assert found["calls"][True] == [(1, 1), (1, 1)]
        assert found["calls"][False] == [(ACCUM, 1), (ACCUM, 1)]


@pytest.mark.slow  # the two_ranks fixture spawns two gloo ranks: ~9 s on 2 cores (.ci/run's slow step runs it)
def test_accumulated_ddp_gradients_agree_across_ranks_and_with_one_process_over_the_global_batch(two_ranks):
    from accumbench.runner import prepare_case

    # One process, the same global micro-batches (MICRO * WORLD samples each, same seed).
    workload = load_workload("gpt", {"size": "tiny"})
    reference = prepare_case(Case("gpt", "accumulated", MICRO * WORLD, ACCUM, GPT_TINY), workload,
                             torch.device("cpu"))
    snapshot = GradSnapshot(reference.state.model)
    reference.state.observer = snapshot
    reference.step()
    expected = snapshot.grads
    for no_sync in (True, False):
        rank0, rank1 = (found["grads"][no_sync] for found in two_ranks)
        assert rank0.keys() == expected.keys()
        for name, grad in expected.items():
            assert torch.equal(rank0[name], rank1[name]), name
            assert torch.allclose(rank0[name], grad, rtol=1e-4, atol=1e-7), (
                name, (rank0[name] - grad).abs().max().item(), grad.abs().max().item())


@pytest.mark.slow  # the two_ranks fixture spawns two gloo ranks: ~9 s on 2 cores (.ci/run's slow step runs it)
def test_ddp_records_carry_world_size_and_allreduce_counts(two_ranks):
    records = [[json.loads(r) for r in found["records"]] for found in two_ranks]
    assert records[0] == [{**r, "timestamp": records[0][i]["timestamp"]} for i, r in enumerate(records[1])]
    nosync, sync = records[0]
    for record, no_sync, calls in ((nosync, True, 1), (sync, False, ACCUM)):
        assert record["status"] == "ok" and record["world_size"] == WORLD
        assert record["case_id"].endswith(f"/ws2/ddp-{'nosync' if no_sync else 'sync'}")
        assert record["scenario"] == "accumulated" and record["micro_batch"] == MICRO
        assert record["effective_batch"] == MICRO * ACCUM * WORLD
        dist_block = record["distributed"]
        assert dist_block["backend"] == "gloo" and dist_block["no_sync"] is no_sync
        assert dist_block["buckets"] == 1 and dist_block["allreduces_per_step"] == calls
        assert dist_block["allreduce_time_s_per_step"] > 0
        assert record["peak_allocated"] == max(dist_block["per_rank_peak_allocated"]) > 0
        assert record["samples_per_s"] == pytest.approx(record["effective_batch"] / statistics.median(record["step_times_s"]))
    assert sync["distributed"]["allreduces_per_step"] == ACCUM * nosync["distributed"]["allreduces_per_step"]


@pytest.mark.slow  # the two_ranks fixture spawns two gloo ranks: ~9 s on 2 cores (.ci/run's slow step runs it)
def test_a_rank_that_fails_makes_the_case_an_error_on_every_rank_and_the_next_case_runs(two_ranks):
    for found in two_ranks:
        failed, after = (json.loads(r) for r in found["after_failure"])
        assert failed["status"] == "error"
        assert failed["error"].startswith("rank 1: ValueError: rank 1 cannot go on")
        assert failed["error"].endswith("(rank 0 gave up waiting for it)")  # its all-reduce timed out
        assert after["status"] == "ok" and after["distributed"]["allreduces_per_step"] == 1


@pytest.mark.slow  # the two_ranks fixture spawns two gloo ranks: ~9 s on 2 cores (.ci/run's slow step runs it)
def test_a_rank_that_cannot_build_the_model_stops_the_others_before_the_collective_timeout(two_ranks):
    for found in two_ranks:
        failed, after = (json.loads(r) for r in found["unbuildable"])
        assert failed["status"] == "error", failed
        assert failed["error"] == "rank 1: ValueError: rank 1 has no checkpoint (rank 0 gave up waiting for it)"
        assert after["status"] == "ok"  # the next case runs on the same job
        assert found["unbuildable_s"] < 20, found["unbuildable_s"]  # the case group's timeout is 30 s


# --- end to end: accumbench run --nproc-per-node 2 ---------------------------------------------

E2E_SUITE = textwrap.dedent('''
    [defaults]
    warmup = 1
    steps = 2

    [[group]]
    workload = "gpt"
    options = { size = "tiny" }
    scenarios = ["large-batch", "accumulated"]
    micro_batch = [2]
    accum_steps = [1, 2]

    [[group]]
    workload = "{plugin}:build"
    scenarios = ["large-batch"]
    micro_batch = [2]

    [[group]]
    workload = "two-models"
    options = { size = "tiny" }
    scenarios = ["multitask-combined"]
    micro_batch = [2]
''')

BROKEN_PLUGIN = textwrap.dedent('''
    import dataclasses
    from accumbench.workloads import load_workload

    def build():
        def loss(output, batch):
            raise ValueError("this loss is broken on every rank")
        return dataclasses.replace(load_workload("mlp", {"size": "tiny"}), name="broken-mlp", loss=loss)
''')


@pytest.mark.slow  # launches torchrun and two fresh Python processes: ~1 min on 2 cores (.ci/run runs it)
def test_nproc_per_node_launches_torchrun_and_rank_0_alone_writes_one_record_per_case(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN_PLUGIN)
    suite = tmp_path / "suite.toml"
    suite.write_text(E2E_SUITE.replace("{plugin}", str(plugin)))
    out = tmp_path / "ddp.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "accumbench", "run", "--nproc-per-node", "2", "--device", "cpu",
         "--suite", str(suite), "--out", str(out), "--timeline"],
        capture_output=True, text=True, timeout=120,
    )
    # exit 1: the broken workload's case failed; it is a record, and torchrun reports no failure
    assert proc.returncode == 1, proc.stderr
    assert "ChildFailedError" not in proc.stderr and "1 case(s) failed with an error" in proc.stderr
    assert "1 multi-task case(s) skipped" in proc.stderr
    assert len(read_records(out)) == 5  # valid records of the contract
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["case_id"] for r in records]
    assert len(ids) == len(set(ids)) == 5  # gpt: large-batch x2, accumulated sync + nosync; broken
    assert {r["world_size"] for r in records} == {2} and len({r["run_id"] for r in records}) == 1
    accumulated = {r["distributed"]["no_sync"]: r for r in records if r["scenario"] == "accumulated"}
    assert accumulated[True]["distributed"]["allreduces_per_step"] == 1
    assert accumulated[False]["distributed"]["allreduces_per_step"] == 2
    broken = next(r for r in records if r["workload"] == "broken-mlp")
    assert broken["status"] == "error" and "this loss is broken on every rank" in broken["error"]

    # --timeline: rank 0's curve of one more step, whose maximum is rank 0's measured peak (DDP's
    # gradient buckets, held in C++, included from the start). Not always to the byte: the
    # asynchronous all-reduce can move a small allocation across the peak (a few hundred bytes
    # seen, on a ConvNet); missing buckets or the rebuild were hundreds of KiB.
    from accumbench.timeline import find_timeline

    for record in records:
        if record["status"] != "ok":
            assert record.get("timeline") is None
            continue
        # The suite asks for 1 warm-up step; DDP runs 2, so that its bucket rebuild (second
        # iteration) is not measured: without it this peak held old and new buckets at once.
        assert record["warmup_steps"] == 2
        timeline = find_timeline(out, record["timeline"], record["case_id"], record["run_id"])
        assert timeline is not None
        assert abs(timeline.peak - record["distributed"]["per_rank_peak_allocated"][0]) <= 1024
        assert timeline.bytes[0] == record["baseline_allocated"]
        forwards = [phase for _, phase, _ in timeline.marks].count("forward")
        assert forwards == record["accum_steps"]

    # The report reads these records: both synchronisations, with their all-reduce counts.
    from accumbench.report import build_report

    report = build_report([out], tmp_path / "report")
    block = next(b for b in report.sections[0].blocks if b.kind.name == "ddp_communication")
    table = block.tables[0]
    counts = {row[table.columns.index("synchronisation")].text: row[table.columns.index("all-reduces per step")].value
              for row in table.rows if row[1].text == "accumulated"}
    assert counts == {"no_sync()": 1, "all-reduce every micro-step": 2}
    assert (tmp_path / "report" / "ddp_communication.png").exists()
    titles = [ax.get_title() for ax in report.figures["memory_timeline"].axes[:2]]
    assert titles[0] == "gpt-tiny: large-batch, micro-batch 2"
    assert titles[1].startswith("gpt-tiny: accumulated, micro-batch 2 x 2, ")  # and how it synchronised


@pytest.mark.slow  # launches torchrun and two ranks, interrupted after the first record: ~15 s on 2 cores
def test_ctrl_c_keeps_the_records_and_ends_with_130_without_torchruns_traceback(tmp_path):
    import signal
    import time

    out = tmp_path / "ddp.jsonl"
    # A terminal's Ctrl-C signals the whole foreground process group: launcher, torchrun, ranks.
    proc = subprocess.Popen([sys.executable, "-m", "accumbench", "run", "--nproc-per-node", "2", "--device", "cpu",
                             "--workload", "gpt", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and out.read_text().count("\n") >= 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "SignalException" not in output and "closing signal" not in output
    kept = read_records(out)
    assert 1 <= len(kept) < 17  # gpt's 17 DDP cases: stopped part-way, nothing measured lost
    assert f"interrupted: {len(kept)} record(s) written this run" in output and "--resume" in output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_world_size_1_on_one_gpu(tmp_path):
    out = tmp_path / "nccl.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "accumbench",
         "run", "--distributed", "--device", "cuda", "--workload", "gpt", "--workload-opt", "size=tiny",
         "--scenario", "accumulated", "--micro-batch", "2", "--accum-steps", "4", "--warmup", "1", "--steps", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = {json.loads(line)["distributed"]["no_sync"]: json.loads(line) for line in out.read_text().splitlines()}
    assert records[True]["meter"] == "cuda" and records[True]["distributed"]["backend"] == "nccl"
    buckets = records[True]["distributed"]["buckets"]
    assert records[True]["distributed"]["allreduces_per_step"] == buckets
    assert records[False]["distributed"]["allreduces_per_step"] == 4 * buckets
