"""The report on DDP records: no_sync() and every-micro-step all-reduce are told apart
everywhere, and the communication figure, table and findings hold the records' numbers."""

from __future__ import annotations

import pytest

from accumbench.records import Record, records_to_frame
from accumbench.report import build_report
from accumbench.report.communication import (
    communication_figure, communication_findings, communication_table,
)
from accumbench.report.data import DDP_NO_SYNC_TEXT, DDP_SYNC_TEXT, prepare

MiB = 1 << 20
BUCKETS = 3


def ddp_rec(scenario: str, micro: int, accum: int, no_sync: bool, step_s: float, allreduce_s: float,
            status: str = "ok", world_size: int = 2) -> Record:
    """A world-size-2 DDP record (per-rank micro-batch, global effective batch)."""
    per_rank = micro * accum
    suffix = "nosync" if no_sync else "sync"
    ok = status == "ok"
    calls = BUCKETS * (1 if no_sync or scenario == "large-batch" else accum)
    return Record(
        run_id="ddp1", case_id=f"gpt/{scenario}/mb{micro}/acc{accum}/ws{world_size}/ddp-{suffix}",
        workload="gpt", scenario=scenario, micro_batch=micro, accum_steps=accum,
        effective_batch=per_rank * world_size, amp="none", set_to_none=True, optimizer="AdamW(foreach)",
        status=status, meter="cpu", device_name="cpu", torch_version="2.13.0", git_commit="abc",
        accumbench_version="0.1.0", timestamp="2026-01-01T00:00:00+00:00", hostname="h", warmup_steps=1,
        measured_steps=3, world_size=world_size,
        peak_allocated=(10 + micro) * MiB if ok else None,
        step_times_s=(step_s,) * 8 if ok else (),
        samples_per_s=per_rank * world_size / step_s if ok else None,
        error=None if ok else "torch.OutOfMemoryError: out of memory",
        distributed={"backend": "gloo", "no_sync": no_sync, "buckets": BUCKETS,
                     "allreduces_per_step": float(calls), "allreduce_time_s_per_step": allreduce_s,
                     "per_rank_peak_allocated": [(10 + micro) * MiB, (9 + micro) * MiB]} if ok else
                    {"backend": "gloo", "no_sync": no_sync},
    )


def records() -> list[Record]:
    return [
        ddp_rec("large-batch", 8, 1, False, step_s=0.10, allreduce_s=0.004),
        ddp_rec("large-batch", 32, 1, False, step_s=0.30, allreduce_s=0.004),
        ddp_rec("accumulated", 8, 4, False, step_s=0.50, allreduce_s=0.016),
        ddp_rec("accumulated", 8, 4, True, step_s=0.40, allreduce_s=0.004),
        ddp_rec("accumulated", 4, 2, False, step_s=0.20, allreduce_s=0.008),
        ddp_rec("accumulated", 4, 2, True, step_s=0.25, allreduce_s=0.005, status="oom"),
    ]


def test_no_sync_and_every_micro_step_sync_are_two_lines_not_one():
    frame, _ = prepare(records_to_frame(records()))
    accumulated = frame[(frame["scenario"] == "accumulated") & (frame["micro_batch"] == 8)]
    assert sorted(accumulated["line"]) == [f"accumulated, micro-batch 8, {DDP_SYNC_TEXT}",
                                           f"accumulated, micro-batch 8, {DDP_NO_SYNC_TEXT}"]
    # Both still compare with the one large batch: no variant splits them from it.
    assert set(frame["variant"]) == {""}
    assert set(frame[frame["scenario"] == "large-batch"]["line"]) == {"large batch"}


def test_communication_table_holds_each_records_counts_and_times():
    frame, _ = prepare(records_to_frame(records()))
    table = communication_table(frame)
    assert len(table.rows) == 6
    by_case = {(r[2].text, r[4].text): r for r in table.rows}
    synced = by_case[("8 × 4", DDP_SYNC_TEXT)]
    unsynced = by_case[("8 × 4", DDP_NO_SYNC_TEXT)]
    col = table.columns.index
    assert synced[col("all-reduces per step")].value == 4 * BUCKETS
    assert unsynced[col("all-reduces per step")].value == BUCKETS
    assert synced[col("all-reduce time per step")].value == pytest.approx(0.016)
    assert unsynced[col("samples/s (all ranks)")].value == pytest.approx(8 * 4 * 2 / 0.40)
    assert synced[col("effective batch (global)")].value == 64
    assert unsynced[col("peak per rank")].text == "18.0 MiB / 17.0 MiB"
    failed = by_case[("4 × 2", DDP_NO_SYNC_TEXT)]
    assert failed[col("status")].text == "oom" and failed[col("all-reduces per step")].value is None
    assert by_case[("8 × 1", "—")][col("all-reduces per step")].value == BUCKETS


def test_communication_figure_draws_the_records_values_and_marks_the_failed_case():
    frame, _ = prepare(records_to_frame(records()))
    fig = communication_figure(frame)
    counts_ax, time_ax, speed_ax = fig.axes[:3]
    categories = [t.get_text() for t in counts_ax.get_yticklabels()]
    assert categories == ["gpt\n4×2 per rank", "gpt\n8×4 per rank"]  # by micro-batch

    def widths(ax, label):
        bars = next(c for c in ax.containers if c.get_label() == label)
        return [round(b.get_width(), 9) for b in bars]

    assert widths(counts_ax, DDP_SYNC_TEXT) == [2 * BUCKETS, 4 * BUCKETS]
    assert widths(counts_ax, DDP_NO_SYNC_TEXT) == [0.0, BUCKETS]  # 0: the OOM case has no bar
    assert widths(time_ax, DDP_SYNC_TEXT) == [8.0, 16.0]  # milliseconds
    assert widths(speed_ax, DDP_NO_SYNC_TEXT)[1] == pytest.approx(64 / 0.40)
    assert any(t.get_text().strip() == "OOM" for t in counts_ax.texts)
    assert "\u221275%" in [t.get_text() for t in counts_ax.texts]  # 3 all-reduces instead of 12


def test_findings_compare_the_two_only_where_both_ran():
    frame, _ = prepare(records_to_frame(records()))
    assert communication_findings(frame) == [
        f"gpt, 8 × 4 per rank: no_sync() makes {BUCKETS} gradient all-reduces per optimizer step "
        f"instead of {4 * BUCKETS}; its samples/s: 1.25× [1.25×, 1.25×] of all-reducing every micro-step.",
    ]


def test_single_process_records_have_no_communication_figure(tmp_path):
    single = [r for r in records() if r.scenario == "large-batch"]
    plain = [Record(**{**r.__dict__, "distributed": None, "world_size": 1, "case_id": r.case_id + "/1"})
             for r in single]
    frame, _ = prepare(records_to_frame(plain))
    assert communication_figure(frame) is None and not communication_table(frame).rows
    result = build_report(records_to_frame(plain), tmp_path)
    assert not (tmp_path / "ddp_communication.png").exists()
    assert "DDP" not in (tmp_path / "summary.md").read_text()
    assert result.records == 2


def test_report_of_ddp_records_writes_the_figure_and_a_summary_row_per_synchronisation(tmp_path):
    build_report(records_to_frame(records()), tmp_path)
    assert (tmp_path / "ddp_communication.png").stat().st_size > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "2 processes" in summary
    assert f"| gpt | accumulated, micro-batch 8, {DDP_NO_SYNC_TEXT} | 8 × 4 | 64 | ok |" in summary
    assert f"| gpt | accumulated, micro-batch 8, {DDP_SYNC_TEXT} | 8 × 4 | 64 | ok |" in summary
    # each row its own throughput: 160 samples/s with no_sync(), 128 without
    rows = {line.split(" | ")[1]: line for line in summary.splitlines() if line.startswith("| gpt | accumulated")}
    assert rows[f"accumulated, micro-batch 8, {DDP_NO_SYNC_TEXT}"].endswith("| 160 (160 – 160) |")
    assert rows[f"accumulated, micro-batch 8, {DDP_SYNC_TEXT}"].endswith("| 128 (128 – 128) |")
    assert "DDP communication" in summary and "1.25× [1.25×, 1.25×]" in summary
    assert "DDP: all-reduce every micro-step vs no_sync()" in (tmp_path / "index.html").read_text()


def test_a_hand_made_frame_without_the_distributed_column_still_reports():
    frame = records_to_frame(records()).drop(columns=["distributed"])
    prepared, _ = prepare(frame)
    assert communication_figure(prepared) is None
    assert all(isinstance(line, str) for line in prepared["line"])


def test_a_throughput_difference_inside_the_scatter_is_said_to_be():
    noisy = [ddp_rec("accumulated", 8, 4, False, step_s=0.50, allreduce_s=0.016),
             ddp_rec("accumulated", 8, 4, True, step_s=0.45, allreduce_s=0.004)]
    # Spread the no_sync() run's steps over the other's: quartiles 0.40 .. 0.55 contain 0.50.
    noisy[1] = Record(**{**noisy[1].__dict__,
                         "step_times_s": (0.30, 0.40, 0.45, 0.55, 0.60, 0.42, 0.58, 0.52)})
    frame, _ = prepare(records_to_frame(noisy))
    (sentence,) = communication_findings(frame)
    # The no_sync() median is known to +-31% only: a range, never a point figure. The range is
    # the bootstrap's 0.86x-1.25x widened by the section's timing drift allowance.
    assert "its samples/s: too noisy to say (a median step time known to ±30.9% only; 0.75×–1.43×)" in sentence
    assert "higher" not in sentence and "lower" not in sentence
