"""Memory timelines on CPU: the curve agrees with the record and shows where the peak is."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from accumbench.cases import Case
from accumbench.cli import main
from accumbench.records import read_records
from accumbench.runner import Runner
from accumbench.timeline import Timeline, decimate, find_timeline, sidecar_path
from accumbench.workloads import load_workload

TINY = (("size", "tiny"),)


@pytest.fixture(scope="module")
def traced():
    """Records and timelines of a few cases, traced through the runner."""
    stored: dict[str, Timeline] = {}

    def sink(record, timeline):
        stored[record.case_id] = timeline
        return "memory"

    runner = Runner(torch.device("cpu"), timeline_sink=sink)
    cases = {
        "large": Case("gpt", "large-batch", 8, 1, TINY, warmup=2, steps=1),
        "acc4": Case("gpt", "accumulated", 8, 4, TINY, warmup=2, steps=1),
        "combined": Case("two-models", "multitask-combined", 8, 1, TINY, warmup=2, steps=1),
        "sequential": Case("two-models", "multitask-sequential", 8, 1, TINY, warmup=2, steps=1),
        # The fp16 GradScaler's scale and growth tracker live between steps too.
        "fp16": Case("gpt", "large-batch", 8, 1, TINY, amp="fp16", warmup=2, steps=1),
    }
    out = {}
    for key, case in cases.items():
        record = runner.measure(case)
        assert record.status == "ok", record.error
        out[key] = (record, stored[record.case_id])
    return out


def grad_bytes(name: str) -> int:
    return sum(p.numel() * 4 for p in load_workload(name, dict(TINY)).build_model().parameters())


def test_curve_maximum_equals_the_record_peak_to_the_byte(traced):
    for record, timeline in traced.values():
        assert timeline.peak == record.peak_allocated
        assert record.timeline == "memory"
        assert timeline.case_id == record.case_id and timeline.run_id == record.run_id


def test_accumulation_shows_one_hump_per_micro_step(traced):
    _, timeline = traced["acc4"]
    forwards = [index for index, phase, _ in timeline.marks if phase == "forward"]
    assert len(forwards) == 4
    optimizer = next(index for index, phase, _ in timeline.marks if phase == "optimizer")
    bounds = forwards + [optimizer]
    activation_bytes = traced["large"][0].breakdown["activations"]
    for start, end in zip(bounds, bounds[1:]):
        floor = timeline.bytes[start]
        hump = max(timeline.bytes[start:end])
        assert hump - floor > activation_bytes // 2  # activations rise ...
        assert timeline.bytes[end] - floor < activation_bytes // 10 or start == forwards[0]  # ... and fall


def test_gradient_floor_appears_after_the_first_backward_and_stays_until_zero_grad(traced):
    _, timeline = traced["acc4"]
    forwards = [index for index, phase, _ in timeline.marks if phase == "forward"]
    zero_grad = next(index for index, phase, _ in timeline.marks if phase == "zero_grad")
    first, second = timeline.bytes[forwards[0]], timeline.bytes[forwards[1]]
    inputs, labels = load_workload("gpt", dict(TINY)).make_batch(8, torch.Generator())
    micro_batch_bytes = inputs.nbytes + labels.nbytes
    # One fp32 gradient per parameter, plus what the loop variables still hold when the next
    # micro-step starts: the previous loss (4 bytes) and the previous micro-batch's copy.
    assert second - first == grad_bytes("gpt") + 4 + micro_batch_bytes
    assert timeline.bytes[forwards[2]] == timeline.bytes[forwards[3]] == second
    assert min(timeline.bytes[forwards[1]:zero_grad]) >= first + grad_bytes("gpt")
    assert timeline.bytes[-1] < first + grad_bytes("gpt")  # set_to_none freed them


def test_combined_holds_two_graphs_before_its_single_backward_and_sequential_is_lower(traced):
    combined_record, combined = traced["combined"]
    sequential_record, sequential = traced["sequential"]
    backward = next(index for index, phase, _ in combined.marks if phase == "backward")
    # Both graphs are alive when the single backward starts: the curve there already exceeds
    # the sequential step's whole peak, and the peak itself comes with backward's first buffers.
    assert combined.bytes[backward] > sequential.peak
    assert combined.peak_phase == ("backward", 0)
    assert sequential.peak < combined.peak
    assert [p for _, p, _ in sequential.marks].count("backward") == 2  # two humps, one per task


def test_peak_attribution_names_a_phase_and_categories(traced):
    _, timeline = traced["acc4"]
    phase, micro = timeline.peak_phase
    assert phase in ("forward", "backward") and micro is not None and micro >= 1
    assert sum(timeline.peak_breakdown.values()) == timeline.peak
    assert timeline.peak_breakdown["grads"] == grad_bytes("gpt")


def test_decimation_keeps_peak_and_remaps_marks():
    values = [i % 100 for i in range(20000)]
    values[12345] = 10**6
    marks = [(0, "forward", 0), (15000, "backward", 0)]
    small, new_marks = decimate(values, marks, max_points=1000)
    assert len(small) <= 1000 and max(small) == 10**6
    assert small[new_marks[1][0]] == values[15000] or new_marks[1][0] < len(small)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The same tiny cases run twice through `accumbench run`, with and without --timeline (shared
    by the sidecar and report tests: one pair of CLI runs instead of one per test)."""
    folder = tmp_path_factory.mktemp("timeline-cli")
    args = ["run", "--device", "cpu", "--workload", "gpt", "--workload-opt", "size=tiny", "--micro-batch", "4",
            "--accum-steps", "1,3", "--steps", "1", "--warmup", "1"]
    plain, traced_out = folder / "plain.jsonl", folder / "traced.jsonl"
    for out, extra in ((plain, []), (traced_out, ["--timeline"])):
        result = CliRunner().invoke(main, [*args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    return plain, traced_out


def test_run_timeline_flag_writes_a_sidecar_and_keeps_the_numbers(cli_runs):
    plain, traced_out = cli_runs
    plain_records, traced_records = read_records(plain), read_records(traced_out)
    assert len(traced_records) == 3
    assert [r.peak_allocated for r in plain_records] == [r.peak_allocated for r in traced_records]
    assert all(r.timeline is None for r in plain_records)
    assert sidecar_path(traced_out).exists() and not sidecar_path(plain).exists()
    for record in traced_records:
        timeline = find_timeline(traced_out, record.timeline, record.case_id, record.run_id)
        assert timeline is not None and timeline.peak == record.peak_allocated


def test_report_draws_the_timelines_with_their_peaks(cli_runs, tmp_path):
    from accumbench.report import build_report

    _, out = cli_runs
    result = build_report([out], tmp_path / "report")
    assert (tmp_path / "report" / "memory_timeline.png").exists()
    figure = result.figures["memory_timeline"]
    left, right = figure.axes[:2]
    records = {r.scenario: r for r in read_records(out) if r.micro_batch == 4}
    scale = 1024**2  # MiB: the tiny GPT peaks at a few MiB
    for ax, scenario in ((left, "large-batch"), (right, "accumulated")):
        curve = ax.get_lines()[0].get_ydata()
        assert max(curve) * scale == pytest.approx(records[scenario].peak_allocated, abs=1)
    assert "Memory through one step" in (tmp_path / "report" / "index.html").read_text()


@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_estimate_timelines_match_the_estimate(tmp_path):
    """On the estimate meter: to the byte for the cpu kind; for a CUDA kind the curve holds the
    step's allocations and the record adds the assumed workspaces, the same for every case."""
    base = ["estimate", "--workload", "gpt", "--workload-opt", "size=tiny", "--micro-batch", "4",
            "--accum-steps", "1,3", "--timeline"]
    gaps = {}
    for kind in ("cpu", "h100"):
        out = tmp_path / f"{kind}.jsonl"
        result = CliRunner().invoke(main, [*base, "--device-kind", kind, "--out", str(out)])
        assert result.exit_code == 0, result.output
        records = read_records(out)
        assert len(records) == 3
        for record in records:
            timeline = find_timeline(out, record.timeline, record.case_id, record.run_id)
            assert timeline is not None
            gaps.setdefault(kind, set()).add(record.peak_allocated - timeline.peak)
    assert gaps["cpu"] == {0}
    (workspaces,) = gaps["h100"]
    assert workspaces > 0


def test_the_drawn_pair_has_a_readable_sawtooth_and_a_partner():
    import pandas as pd

    from accumbench.report.timelines import _label, _pairs

    cases = [("large-batch", 8, 1), ("large-batch", 64, 1), ("accumulated", 8, 2), ("accumulated", 8, 4),
             ("accumulated", 8, 32), ("accumulated", 64, 2), ("accumulated", 16, 4),  # 16: no large batch
             ("multitask-combined", 4, 1), ("multitask-sequential", 4, 1), ("multitask-sequential", 4, 4)]
    frame = pd.DataFrame([{"section": 0, "workload": "w", "scenario": s, "micro_batch": m, "accum_steps": n}
                          for s, m, n in cases])
    pairs = [(left["scenario"], left["micro_batch"], left["accum_steps"], right["micro_batch"], right["accum_steps"])
             for left, right in _pairs(frame, dict.fromkeys(frame.index))]
    # 4 steps at the largest micro-batch that has a large batch to stand beside; the sequential
    # case with 4 steps has no combined partner, so the one with 1 step is drawn.
    assert pairs == [("large-batch", 8, 1, 8, 4), ("multitask-combined", 4, 1, 4, 1)]
    # Only within one variant: an fp32 large batch is never drawn beside a bf16 accumulation.
    variants = pd.DataFrame([{"section": 0, "workload": "w", "scenario": s, "micro_batch": 2, "accum_steps": n,
                              "variant": v} for s, n, v in (("large-batch", 1, "amp=none"), ("accumulated", 4, "amp=bf16"),
                                                            ("accumulated", 2, "amp=none"))])
    (left, right), = _pairs(variants, dict.fromkeys(variants.index))
    assert (left["variant"], right["variant"], right["accum_steps"]) == ("amp=none", "amp=none", 2)
    assert _label(right) == "w: accumulated, micro-batch 2 x 2 (amp=none)"


def test_a_broken_sidecar_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    from accumbench.timeline import read_timelines

    good = Timeline(bytes=(0, 64, 32), marks=((0, "forward", 0),), source="tracker", case_id="c", run_id="r")
    sidecar = tmp_path / "r.timelines.jsonl"
    sidecar.write_text("\n".join(['{"bytes": [1, 2', "garbage", '{"a": 1}', '{"bytes": ["x"], "marks": [], '
                                  '"source": "tracker"}', good.to_json()]) + "\n")
    warnings: list[str] = []
    assert list(read_timelines(sidecar, warnings.append)) == [good]
    assert [w.split(": skipped")[0] for w in warnings] == [f"{sidecar}:{n}" for n in (1, 2, 3, 4)]
    assert find_timeline(tmp_path / "r.jsonl", sidecar.name, "c", "r") == good
    (tmp_path / "folder.timelines.jsonl").mkdir()  # not a file: no timelines, no crash
    assert find_timeline(tmp_path / "r.jsonl", "folder.timelines.jsonl", "c", "r") is None
