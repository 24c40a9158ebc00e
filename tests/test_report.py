"""`accumbench report`: figures hold the records' numbers, the page shows them, bad input is said.

Records are hand-made with known numbers (a GPT-like model on an 80 GiB device whose large batch
runs out of memory at 256; a small CPU section; multi-task and equivalence results), plus one real
CPU run of a tiny plug-in model. The HTML page is opened in headless Chromium.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import Record, read_records, records_to_frame, write_records
from accumbench.report import ReportInputError, build_report
from accumbench.report import bars, figures, findings
from accumbench.report.data import memory_fits, prepare

GiB = 1 << 30
MiB = 1 << 20
H100 = "NVIDIA H100 80GB HBM3"

# The synthetic GPT: 4 GiB that does not depend on the batch, 320 MiB of activations per sample,
# 64 MiB more for accumulation (the gradients persist across micro-steps). Batch 256 would need
# 84 GiB of an 80 GiB device: out of memory.
STATIC, PER_SAMPLE, ACCUM_EXTRA = 4 * GiB, 320 * MiB, 64 * MiB
LARGE_BATCHES = (8, 16, 32, 64, 128, 256)
TOTAL = 80 * GiB


def rec(workload="gpt", scenario="large-batch", micro=8, accum=1, **fields) -> Record:
    """A record with plausible defaults; `fields` override any Record field."""
    values = dict(
        run_id="run1", case_id=f"{workload}/{scenario}/mb{micro}/acc{accum}", workload=workload,
        scenario=scenario, micro_batch=micro, accum_steps=accum, effective_batch=micro * accum,
        amp="bf16", set_to_none=True, optimizer="AdamW(foreach)", status="ok",
        meter="cuda", device_name=H100, device_total_memory=TOTAL, torch_version="2.11.0",
        cuda_version="12.8", git_commit="abc1234", accumbench_version="0.1.0",
        timestamp="2025-01-01T00:00:00+00:00", hostname="gpu1", warmup_steps=2,
        measured_steps=4,
    )
    values.update(fields)
    return Record(**values)


def peak_large(batch: int) -> int:
    return STATIC + PER_SAMPLE * batch


def step_time(micro: int, accum: int) -> float:
    return accum * (0.01 + 0.002 * micro)


def times(t: float) -> tuple[float, ...]:
    # Quartiles (inclusive method) of these four: 0.9975 t, 1.0 t, 1.0125 t.
    return (0.99 * t, 1.0 * t, 1.0 * t, 1.05 * t)


def gpt_records() -> list[Record]:
    out = []
    for b in LARGE_BATCHES:
        if peak_large(b) > TOTAL:
            out.append(rec(micro=b, status="oom", error="torch.OutOfMemoryError: CUDA out of memory"))
            continue
        t = step_time(b, 1)
        out.append(rec(micro=b, peak_allocated=peak_large(b), step_times_s=times(t),
                       samples_per_s=b / t, tokens_per_s=512 * b / t,
                       first_step_peak_allocated=peak_large(b) + GiB,
                       breakdown={"params": GiB, "grads": GiB, "optimizer": 2 * GiB,
                                  "activations": PER_SAMPLE * b, "other": 0}))
    for m in (8, 32):
        for n in (2, 4, 8):
            t = step_time(m, n)
            out.append(rec(scenario="accumulated", micro=m, accum=n,
                           peak_allocated=peak_large(m) + ACCUM_EXTRA, step_times_s=times(t),
                           samples_per_s=m * n / t, tokens_per_s=512 * m * n / t))
    return out


def multitask_records() -> list[Record]:
    out = []
    for workload, layout, seq_peak, seq_speed in (("two-models", "separate", 0.6, 1.0),
                                                  ("shared-trunk", "shared-trunk", 1.0, 0.7)):
        for scenario, peak, speed in (("multitask-combined", 1.0, 1.0),
                                      ("multitask-sequential", seq_peak, seq_speed)):
            t = 0.05 / speed
            out.append(rec(workload=workload, scenario=scenario, micro=16, layout=layout,
                           tasks=("a", "b"), peak_allocated=int(6 * GiB * peak),
                           step_times_s=(t, t, t), samples_per_s=16 / t,
                           retain_graph=scenario.endswith("sequential") and layout != "separate"))
    return out


def equivalence_records() -> list[Record]:
    return [
        rec(workload="convnet-bn", scenario="accumulated", micro=8, accum=4, peak_allocated=GiB,
            equivalence={"rel_error": 0.12, "verdict": "not-equivalent", "accum_steps": 4,
                         "dtype": "float32", "worst_parameters": [["bn1.weight", 0.31]],
                         "causes": ["BatchNorm statistics are per micro-batch"]}),
        rec(workload="mlp", scenario="accumulated", micro=8, accum=4, peak_allocated=GiB,
            equivalence={"rel_error": 1.2e-7, "verdict": "equivalent", "seed": 0}),
        # Defensive rendering: a block without a numeric error is tabled, not plotted.
        rec(workload="gpt-padded", scenario="accumulated", micro=8, accum=4, peak_allocated=GiB,
            equivalence={"verdict": "skipped", "reason": "no tokens"}),
    ]


def cpu_records() -> list[Record]:
    common = dict(workload="mlp", meter="cpu", device_name="cpu (x86_64)",
                  device_total_memory=None, cuda_version=None, torch_version="2.13.0+cpu")
    out = [rec(micro=b, peak_allocated=10 * MiB + 4096 * b, step_times_s=times(0.01 * b),
               **common) for b in (4, 16)]
    out.append(rec(scenario="accumulated", micro=4, accum=4, peak_allocated=10 * MiB + 4096 * 4 + 512,
                   step_times_s=times(0.2), **common))
    return out


def prepared(records, source="results.jsonl"):
    frame, notes = prepare(records_to_frame(records).assign(source=source))
    return frame, notes


def lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()}


# --- figures hold the records' numbers -------------------------------------------------------

def test_memory_figure_draws_large_batch_accumulation_oom_and_device_memory():
    frame, _ = prepared(gpt_records())
    fig = figures.memory_vs_effective_batch(frame)
    (ax,) = fig.axes
    assert "GiB" in ax.get_ylabel()
    drawn = lines(ax)

    ok_large = [b for b in LARGE_BATCHES if peak_large(b) <= TOTAL]
    assert drawn["large batch"][0] == ok_large
    assert drawn["large batch"][1] == pytest.approx([peak_large(b) / GiB for b in ok_large])

    # Accumulation lines are flat and start from the large batch at their micro-batch.
    x, y = drawn["accumulated, micro-batch 8"]
    assert x == [8, 16, 32, 64]
    assert y == pytest.approx([peak_large(8) / GiB] + [(peak_large(8) + ACCUM_EXTRA) / GiB] * 3)
    assert drawn["accumulated, micro-batch 32"][0] == [32, 64, 128, 256]

    # The OOM at 256 sits where the large-batch line predicts it: above the device's memory.
    oom_x, oom_y = drawn[figures.OOM_LABEL]
    assert oom_x == [256]
    assert oom_y == pytest.approx([peak_large(256) / GiB])
    assert oom_y[0] > 80

    device = drawn[figures.device_memory_label(TOTAL)]
    assert device[1] == pytest.approx([80, 80])


def test_oom_without_a_fitted_line_sits_on_device_memory_or_at_the_top():
    base = [rec(micro=8, peak_allocated=30 * GiB), rec(micro=16, status="oom")]
    frame, _ = prepared(base)
    drawn = lines(figures.memory_vs_effective_batch(frame).axes[0])
    assert drawn[figures.OOM_LABEL] == ([16], [80.0])

    unknown = [r.__class__(**{**r.__dict__, "device_total_memory": None}) for r in base]
    frame, _ = prepared(unknown)
    ax = figures.memory_vs_effective_batch(frame).axes[0]
    (mark,) = [line for line in ax.get_lines() if line.get_label() == figures.OOM_UNPLACED_LABEL]
    assert list(mark.get_xdata()) == [16]
    assert mark.get_transform() == ax.get_xaxis_transform()  # y in axes coordinates: the top


def test_device_memory_far_above_the_peaks_is_named_not_drawn():
    # 1 and 2 GiB on an 80 GiB device: a line at 80 would flatten the data against the axis.
    frame, _ = prepared([rec(micro=8, peak_allocated=GiB), rec(micro=16, peak_allocated=2 * GiB)])
    ax = figures.memory_vs_effective_batch(frame).axes[0]
    assert figures.device_memory_label(TOTAL) not in lines(ax)
    assert ax.get_ylim()[1] < 3
    assert [t.get_text() for t in ax.texts] == ["device memory (80.0 GiB): far above"]


def test_throughput_figure_points_are_median_rates_and_bars_span_the_quartiles():
    frame, _ = prepared(gpt_records())
    ax = figures.throughput_vs_effective_batch(frame, "samples").axes[0]
    x, y = lines(ax)["large batch"]
    ok_large = [b for b in LARGE_BATCHES if peak_large(b) <= TOTAL]
    assert x == ok_large
    assert y == pytest.approx([b / step_time(b, 1) for b in ok_large])
    # The error bar of batch 8: rate at the 3rd and 1st step-time quartiles.
    t = step_time(8, 1)
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    low, high = 8 / (1.0125 * t), 8 / (0.9975 * t)
    assert any(seg[0][0] == 8 and seg[0][1] == pytest.approx(low) and
               seg[1][1] == pytest.approx(high) for seg in segments)

    tokens = figures.throughput_vs_effective_batch(frame, "tokens").axes[0]
    assert lines(tokens)["large batch"][1] == pytest.approx([512 * v for v in y])


def test_tokens_figure_is_absent_without_tokens():
    frame, _ = prepared(cpu_records())
    assert figures.throughput_vs_effective_batch(frame, "tokens") is None
    assert figures.throughput_vs_effective_batch(frame, "samples") is not None


def test_memory_fit_recovers_bytes_per_sample_and_intercept_and_is_drawn():
    frame, _ = prepared(gpt_records())
    fits = memory_fits(frame)
    large = fits[fits["scenario"] == "large-batch"].iloc[0]
    assert large["bytes_per_sample"] == pytest.approx(PER_SAMPLE)
    assert large["intercept_bytes"] == pytest.approx(STATIC)
    assert large["r2"] == pytest.approx(1.0)
    accum = fits[fits["scenario"] == "accumulated"].iloc[0]
    assert accum["intercept_bytes"] == pytest.approx(STATIC + ACCUM_EXTRA)

    drawn = lines(figures.memory_vs_micro_batch(frame, fits).axes[0])
    label = figures.fit_label(PER_SAMPLE, STATIC)
    assert label == "fit: 320 MiB/sample + 4.00 GiB"
    assert drawn[label][0] == [0, 128]
    assert drawn[label][1] == pytest.approx([4, peak_large(128) / GiB])
    assert drawn["large batch"][0] == [8, 16, 32, 64, 128]


def test_multitask_bars_hold_peaks_and_rates_per_layout():
    frame, _ = prepared(multitask_records())
    memory_ax, speed_ax = bars.multitask_comparison(frame).axes
    heights = {c.get_label(): [p.get_width() for p in c] for c in memory_ax.containers}
    # Categories in workload order: shared-trunk, two-models.
    assert heights["combined loss"] == pytest.approx([6, 6])
    assert heights["sequential backward"] == pytest.approx([6, 3.6])
    speeds = {c.get_label(): [p.get_width() for p in c] for c in speed_ax.containers}
    assert speeds["sequential backward"] == pytest.approx([16 / (0.05 / 0.7), 16 / 0.05])
    # Sequential needs retain_graph on a shared trunk: that is the scenario, not a variant.
    assert "retain_graph" not in " ".join(frame["line"])


def test_breakdown_bars_stack_the_recorded_categories():
    frame, _ = prepared(gpt_records())
    ax = bars.memory_breakdown(frame).axes[0]
    widths = {c.get_label(): [p.get_width() for p in c] for c in ax.containers}
    ok_large = [b for b in LARGE_BATCHES if peak_large(b) <= TOTAL]
    assert widths["optimizer"] == pytest.approx([2.0] * len(ok_large))
    assert widths["activations"] == pytest.approx([PER_SAMPLE * b / GiB for b in ok_large])
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "large batch 8×1"


def test_equivalence_points_are_the_relative_errors_coloured_by_verdict():
    frame, _ = prepared(equivalence_records())
    ax = bars.gradient_equivalence(frame).axes[0]
    drawn = lines(ax)
    assert drawn["not-equivalent"][0] == pytest.approx([0.12])
    assert drawn["equivalent"][0] == pytest.approx([1.2e-7])
    assert len(ax.get_yticklabels()) == 2  # the block without rel_error is not plotted


def test_figures_absent_when_records_do_not_carry_what_they_show():
    frame, _ = prepared(cpu_records())
    assert bars.memory_breakdown(frame) is None
    assert bars.gradient_equivalence(frame) is None
    assert bars.multitask_comparison(frame) is None


def test_findings_read_the_numbers():
    frame, _ = prepared(gpt_records() + multitask_records())
    assert findings.memory_findings(frame)[0] == (
        "gpt: the large batch peaks at 44.0 GiB at effective batch 128; runs out of memory from "
        "effective batch 256; accumulating 32 × 8 reaches 256 at 14.1 GiB, where the large "
        "batch ran out of memory.")
    # Four (or three) step times per case: no interval, so no speed claim (tests/test_stats.py
    # covers the ratios themselves).
    assert findings.throughput_findings(frame) == [
        "gpt, effective batch 128, accumulation's samples/s relative to the large batch's (95% "
        "interval): 32 × 4: too few steps to say."]
    assert findings.multitask_findings(frame) == [
        "two-models (separate, 16×1): compared with the combined loss, sequential backward "
        "needs 40.0% less peak memory; its samples/s: too few steps to say.",
        "shared-trunk (shared-trunk, 16×1): compared with the combined loss, sequential "
        "backward needs the same peak memory; its samples/s: too few steps to say."]


def test_findings_compare_within_one_variant_only():
    records = []
    for amp, scale in (("bf16", 1), ("fp16", 2)):
        records += [rec(micro=8, amp=amp, case_id=f"{amp}8", peak_allocated=scale * 10 * GiB),
                    rec(micro=32, amp=amp, case_id=f"{amp}32", peak_allocated=scale * 40 * GiB),
                    rec(scenario="accumulated", micro=8, accum=4, amp=amp, case_id=f"{amp}8x4",
                        peak_allocated=scale * 11 * GiB)]
    frame, _ = prepared(records)
    assert findings.memory_findings(frame) == [
        "gpt (amp=bf16): the large batch peaks at 40.0 GiB at effective batch 32; accumulating "
        "8 × 4 reaches 32 at 11.0 GiB (72.5% less than the large batch).",
        "gpt (amp=fp16): the large batch peaks at 80.0 GiB at effective batch 32; accumulating "
        "8 × 4 reaches 32 at 22.0 GiB (72.5% less than the large batch).",
    ]


# --- preparation ----------------------------------------------------------------------------

def test_varying_knobs_name_the_lines_and_repeated_cases_keep_the_last():
    records = [rec(micro=8, peak_allocated=5 * GiB, amp="bf16"),
               rec(micro=16, peak_allocated=9 * GiB, amp="bf16", case_id="b16"),
               rec(micro=8, peak_allocated=7 * GiB, amp="none", case_id="n8"),
               rec(micro=16, peak_allocated=13 * GiB, amp="none", case_id="n16"),
               rec(micro=16, peak_allocated=12 * GiB, amp="none", case_id="n16")]
    frame, notes = prepared(records)
    assert set(frame["line"]) == {"large batch (amp=bf16)", "large batch (amp=none)"}
    assert any("1 repeated case" in n for n in notes)
    drawn = lines(figures.memory_vs_effective_batch(frame).axes[0])
    assert drawn["large batch (amp=none)"][1] == pytest.approx([7, 12])


def test_sections_split_by_meter_and_world_size_and_name_them():
    records = [rec(micro=8, peak_allocated=GiB), rec(micro=8, peak_allocated=GiB, meter="estimate"),
               rec(micro=8, peak_allocated=GiB, world_size=2, device_name="")]
    frame, _ = prepared(records)
    assert list(dict.fromkeys(frame["section_title"])) == [
        f"{H100} · cuda meter", f"{H100} · estimate meter", "unknown device · cuda meter · 2 processes"]
    # DDP and FSDP records appended to one file are other steps: a section each.
    both = [rec(micro=8, peak_allocated=GiB, world_size=2, distributed={"no_sync": True}),
            rec(micro=8, peak_allocated=GiB // 2, world_size=2, distributed={"parallel": "fsdp", "no_sync": True})]
    frame, _ = prepared(both)
    assert list(dict.fromkeys(frame["section_title"])) == [f"{H100} · cuda meter · 2 processes · DDP",
                                                           f"{H100} · cuda meter · 2 processes · FSDP"]


def test_odd_records_make_a_report_not_a_traceback(tmp_path):
    odd = [
        rec(workload="w", scenario="custom-scenario", micro=4, peak_allocated=GiB),
        rec(workload="w", scenario="custom-scenario", micro=8, peak_allocated=2 * GiB,
            step_times_s=()),  # no step times: an unknown rate (a zero step time is refused on reading)
        rec(workload="w", micro=4, status="error", error="Traceback\nRuntimeError: " + "x" * 400),
        rec(workload="w", micro=8, peak_allocated=3 * GiB, breakdown={"params": 5, "weird": 7}),
        rec(workload="w", micro=16, peak_allocated=4 * GiB, step_times_s=(0.1,)),
        rec(workload="w", scenario="accumulated", micro=4, accum=2, peak_allocated=GiB,
            equivalence={"rel_error": "n/a", "worst_parameters": "none", "causes": "x|y"}),
        rec(workload="w", scenario="accumulated", micro=4, accum=4, peak_allocated=GiB,
            equivalence={"rel_error": 0.0, "verdict": "equivalent"}),
        rec(workload="a|b<i>", micro=4, peak_allocated=GiB, step_times_s=(1.0,)),
        rec(workload="a|b<i>", micro=8, peak_allocated=GiB, step_times_s=(2.0,)),
    ]
    path = tmp_path / "odd.jsonl"
    write_records(path, odd)
    result = build_report([path], tmp_path / "out")
    assert result.notes == (f"{H100} · cuda meter: 1 case(s) failed with an error "
                            "(listed under 'Failed cases')",)
    drawn = lines(result.figures["memory_vs_effective_batch"].axes[0])
    assert drawn["custom-scenario"] == ([4, 8], [1.0, 2.0])
    assert figures.OOM_LABEL not in drawn  # an error is not an out-of-memory

    html = (tmp_path / "out" / "index.html").read_text()
    assert "a|b&lt;i&gt;" in html and "a|b<i>" not in html
    page = parse(tmp_path / "out" / "index.html")
    (failure,) = rows_by_header(page.tables["section-1-failures-table"])
    assert failure["message"][0] == "RuntimeError: " + "x" * 143 + "..."
    memory = rows_by_header(page.tables["section-1-memory"])
    assert [r["predicted peak (fit)"][0] for r in memory if r["status"][0] == "error"] == ["—"]
    eq = rows_by_header(page.tables["section-1-equivalence"])
    assert [r["relative error"][0] for r in eq] == ["n/a", "0"]
    assert lines(result.figures["gradient_equivalence"].axes[0])["equivalent"][0][0] > 0

    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| a\\|b<i> | large batch | 4 × 1 |" in summary


def test_prepare_refuses_frames_without_the_record_columns():
    frame = records_to_frame(gpt_records()).drop(columns=["peak_allocated"])
    with pytest.raises(ReportInputError, match="peak_allocated"):
        prepare(frame)


# --- the written report ---------------------------------------------------------------------

class Page(HTMLParser):
    """Collects tables (id -> rows of (text, data-value)), images and sections of the page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.images: list[dict] = []
        self.sections: list[str] = []
        self.links: list[str] = []
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = [attrs.get("data-value"), ""]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "section":
            self.sections.append(attrs["data-section"])
        elif tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append((self._cell[1], self._cell[0]))
            self._cell = None
        elif tag == "table":
            self._table = None


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def rows_by_header(table):
    header = [text for text, _ in table[0]]
    return [dict(zip(header, row)) for row in table[1:]]


@pytest.fixture(scope="module")
def two_device_report(tmp_path_factory):
    """A report of a GPU results file and a CPU results file: two sections."""
    folder = tmp_path_factory.mktemp("report")
    gpu, cpu = folder / "h100.jsonl", folder / "cpu.jsonl"
    write_records(gpu, gpt_records() + multitask_records() + equivalence_records())
    write_records(cpu, cpu_records())
    result = build_report([gpu, cpu], folder / "out")
    return result, gpu, cpu


def test_report_writes_every_expected_file(two_device_report):
    result, _, _ = two_device_report
    out = result.out_dir
    expected = ["index.html", "summary.md"]
    for kind in ("memory_vs_effective_batch", "throughput_vs_effective_batch",
                 "tokens_vs_effective_batch", "memory_vs_micro_batch", "multitask_comparison",
                 "memory_breakdown", "gradient_equivalence"):
        expected += [f"{kind}.png", f"{kind}.svg", f"{kind}--section-1.png"]
    expected += ["memory_vs_effective_batch--section-2.png", "memory_vs_micro_batch--section-2.png"]
    for name in expected:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (out / "memory_vs_effective_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "memory_vs_effective_batch.svg").read_text()
    # The CPU section has no breakdowns: no such file, and the page says so.
    assert not (out / "memory_breakdown--section-2.png").exists()
    assert "no record carries a memory breakdown" in (out / "index.html").read_text()
    # Every link of the page goes to an anchor of the page or a file beside it.
    page = parse(out / "index.html")
    anchors = set(re.findall(r'id="([^"]+)"', (out / "index.html").read_text()))
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in anchors, href
        else:
            assert (out / href).is_file(), href


def test_devices_are_never_merged(two_device_report):
    result, gpu, cpu = two_device_report
    assert [s.title for s in result.sections] == [f"{H100} · cuda meter · h100.jsonl",
                                                  "cpu (x86_64) · cpu meter · cpu.jsonl"]
    # The same workload and case ('mlp', large batch) on both devices: separate panels.
    fig = result.figures["memory_vs_effective_batch"]
    # Workloads measured at one batch size (multi-task, equivalence) make no line: not drawn.
    gpu_title, cpu_title = (s.title for s in result.sections)
    assert [ax.get_title() for ax in fig.axes] == [f"gpt\n{gpu_title}", f"mlp\n{cpu_title}"]
    mlp_ax = fig.axes[1]
    assert "MiB" in mlp_ax.get_ylabel()
    assert lines(mlp_ax)["large batch"][1] == pytest.approx([(10 * MiB + 4096 * b) / MiB
                                                             for b in (4, 16)])


def test_html_tables_hold_the_records_numbers(two_device_report):
    result, gpu, cpu = two_device_report
    page = parse(result.out_dir / "index.html")
    assert page.sections == [s.title for s in result.sections]

    memory = rows_by_header(page.tables["section-1-memory"])
    by_case = {(r["workload"][0], r["case"][0], int(r["effective batch"][1])): r for r in memory}
    for record in read_records(gpu):
        if record.scenario != "large-batch":
            continue
        row = by_case[(record.workload, "large batch", record.effective_batch)]
        assert row["status"][0] == record.status
        if record.status == "ok":
            assert int(row["peak allocated"][1]) == record.peak_allocated
        else:
            assert row["peak allocated"][0] == "—"
            assert float(row["predicted peak (fit)"][1]) == pytest.approx(peak_large(256))

    fits = rows_by_header(page.tables["section-1-fit"])
    gpt_large = [r for r in fits if r["workload"][0] == "gpt" and r["scenario"][0] == "large batch"]
    assert float(gpt_large[0]["bytes per sample"][1]) == pytest.approx(PER_SAMPLE)

    cpu_memory = rows_by_header(page.tables["section-2-memory"])
    assert sorted(int(r["peak allocated"][1]) for r in cpu_memory) == sorted(
        r.peak_allocated for r in read_records(cpu))

    eq = rows_by_header(page.tables["section-1-equivalence"])
    assert {r["verdict"][0] for r in eq} == {"equivalent", "not-equivalent", "skipped"}
    assert any("reason=no tokens" in r["details"][0] for r in eq)
    assert any("bn1.weight (0.31)" in r["worst parameters"][0] for r in eq)

    env = (result.out_dir / "index.html").read_text()
    for fact in ("2.11.0", "12.8", "abc1234", "2.13.0+cpu", "What this shows"):
        assert fact in env
    # Self-contained: every image is embedded.
    assert page.images and all(img["src"].startswith("data:image/png;base64,") for img in page.images)


def test_summary_has_the_key_table(two_device_report):
    result, _, _ = two_device_report
    summary = (result.out_dir / "summary.md").read_text()
    assert f"### {H100} · cuda meter · h100.jsonl" in summary
    assert "| gpt | large batch | 128 × 1 | 128 | ok | 44.0 GiB | 55.0% |" in summary
    assert "| gpt | large batch | 256 × 1 | 256 | oom | — | — | — |" in summary
    assert "| gpt | large batch | 320 MiB | 4.00 GiB | 1.0000 |" in summary
    assert "two-models | separate | 16×1 | 6.00 GiB | 3.60 GiB | -40.0% | too few steps to say |" in summary


# --- the page in a real browser ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="accumbench-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_page_loads_all_its_figures_in_a_headless_browser(two_device_report):
    result, _, _ = two_device_report
    url = (result.out_dir / "index.html").resolve().as_uri()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    broken = int(re.search(r'data-broken-images="(\d+)"', body).group(1))
    figures_written = sum(1 for s in result.sections for b in s.blocks if b.png is not None)
    assert images == figures_written > 0
    assert broken == 0

    shot = result.out_dir / "screenshot.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000  # a rendered page with figures, not a blank one


# --- the command line: real runs and bad input ---------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_report_of_a_real_cpu_run(tmp_path, plugin_path):
    results = tmp_path / "cpu.jsonl"
    run = invoke("run", "--device", "cpu", "--workload", f"{plugin_path}:single",
                 "--micro-batch", "2,4", "--accum-steps", "1,2", "--steps", "2", "--warmup", "1",
                 "--out", results)
    assert run.exit_code == 0, run.output
    out = tmp_path / "report"
    result = invoke("report", results, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'index.html'}" in result.output
    records = [r for r in read_records(results) if r.scenario == "large-batch"]
    assert records and all(r.status == "ok" for r in records)
    assert (out / "memory_vs_effective_batch.png").is_file()
    assert (out / "memory_vs_effective_batch.svg").is_file()
    page = parse(out / "index.html")
    memory = rows_by_header(page.tables["section-1-memory"])
    shown = {(r["case"][0], int(r["effective batch"][1])): int(r["peak allocated"][1])
             for r in memory}
    for r in records:
        assert shown[("large batch", r.effective_batch)] == r.peak_allocated


def test_no_files_is_a_usage_error():
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 2
    assert "Missing argument 'RESULTS...'" in result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no records in {path}: nothing to report"),
        ('{"schema": 1, "workload": "x"}\n', "{path}:1: missing field(s)"),
        ('{"hello": "world"}\n', "{path}:1: no integer 'schema' field: not an accumbench record"),
        ('{"schema": 99}\n', "{path}:1: schema 99 is newer than this accumbench understands"),
        ("not json\n", "{path}:1: not valid JSON"),
    ],
)
def test_bad_files_exit_2_with_a_message_not_a_traceback(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = CliRunner().invoke(main, ["report", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.startswith("error: " + message.format(path=path))
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "index.html").exists()


def test_missing_file_and_directory_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output


def test_an_out_folder_under_a_file_exits_2_in_one_line_and_creates_nothing(tmp_path):
    path = tmp_path / "one.jsonl"
    write_records(path, [rec(micro=8)])
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(main, ["report", str(path), "--out", str(tmp_path / "file" / "deeper" / "out")])
    assert result.exit_code == 2
    assert result.output == f"error: cannot write --out {tmp_path / 'file' / 'deeper' / 'out'}: " \
                            f"{tmp_path / 'file'} is a file, not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "one.jsonl"]


def test_only_ooms_make_a_report_that_says_what_is_missing(tmp_path):
    path = tmp_path / "ooms.jsonl"
    write_records(path, [rec(micro=b, status="oom") for b in (64, 128, 256)])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "no case ran successfully (3 oom)" in result.output
    html = (out / "index.html").read_text()
    assert "no case ran successfully" in html
    assert "Throughput vs effective batch: no workload has step times" in html
    assert "Failed cases" in html
    # The headline still shows where it ran out: on the device-memory line.
    assert (out / "memory_vs_effective_batch.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "| gpt | large batch | 256 × 1 | 256 | oom |" in summary


def test_an_empty_file_among_good_ones_is_noted_and_left_out(tmp_path):
    good, empty = tmp_path / "good.jsonl", tmp_path / "empty.jsonl"
    write_records(good, cpu_records())
    empty.write_text("\n")
    result = build_report([good, empty], tmp_path / "out")
    assert result.notes == (f"{empty}: no records (empty file); left out of the report",)
    assert len(result.sections) == 1


def test_figures_say_what_made_them_and_keep_lines_and_predictions_apart(tmp_path):
    """Footer with provenance on every figure; distinct colour+marker per line of the headline
    figure, a direct label at each accumulation line's end; an OOM drawn and labelled as a
    prediction; a log y axis when lines crowd near zero; no r² for a 2-point fit."""
    records = gpt_records()
    # A second scenario measured at only two micro-batches: its fit has no r².
    records += [rec(workload="mlp", micro=m, peak_allocated=10 * MiB + 4096 * m, case_id=f"mlp{m}")
                for m in (4, 16)]
    path = tmp_path / "r.jsonl"
    write_records(path, records)
    result = build_report([path], tmp_path / "out")
    for name, fig in result.figures.items():
        footer = fig._supxlabel.get_text()
        for expected in (H100, "cuda meter", "torch 2.11.0", "accumbench 0.1.0", "commit abc1234",
                         "2025-01-01"):
            assert expected in footer, (name, footer)
    ax = result.figures["memory_vs_effective_batch"].axes[0]
    styles = [(line.get_color(), line.get_marker()) for line in ax.get_lines()
              if line.get_label().startswith(("large batch", "accumulated"))]
    assert len(styles) == len(set(styles)) == 3  # no two lines look alike
    markers = [m for _, m in styles]
    assert len(markers) == len(set(markers))  # told apart without colour too
    ends = {t.get_text() for t in ax.texts}
    assert {"mb 8", "mb 32"} <= ends
    assert figures.PREDICTED_TEXT in ends  # the OOM x is labelled as a prediction
    assert "not measured" in figures.OOM_LABEL
    # 6.5 .. 84 GiB spans 13x: linear still reads; a wider span (the H100's 2.4 .. 117 GiB) is log.
    assert ax.get_yscale() == "linear"
    from accumbench.report.layout import crowded_y
    assert crowded_y([2.4, 5.0, 117.0]) and not crowded_y([6.5, 84.0]) and not crowded_y([0.0, 5.0])
    fit = next(b for s in result.sections for b in s.blocks if b.kind.name == "memory_vs_micro_batch")
    (table,) = fit.tables
    r2 = {row[0].text: row[-1].text for row in table.rows}
    assert r2["mlp"] == "—" and r2["gpt"] != "—"
    assert any("2 points: a line through them fits by construction" in f for f in fit.findings)
    assert not any("r²" in f for f in fit.findings if f.startswith("mlp"))


def test_noise_line_claims_no_spread_when_no_case_has_enough_steps():
    few = [rec(micro=m, peak_allocated=peak_large(m), step_times_s=[0.1, 0.12, 0.11]) for m in (8, 16)]
    frame, _ = prepare(records_to_frame(few))
    (line,) = findings.noise_findings(frame)
    assert line.startswith("Timing: every one of the 2 timed cases has under 6 step times")
    enough = [rec(micro=m, peak_allocated=peak_large(m), step_times_s=[0.1, 0.12, 0.11, 0.1, 0.1, 0.1])
              for m in (8, 16)]
    frame, _ = prepare(records_to_frame(enough))
    assert findings.noise_findings(frame)[0].startswith("Timing noise: step times spread by")


def test_a_recorded_rate_a_rounding_off_batch_over_median_draws_without_negative_bars():
    # One step time (quartiles = median) and a samples/s not exactly batch / median, as a record
    # from another tool or version may hold: matplotlib refused a bar end a hair past the point.
    odd = [rec(micro=m, peak_allocated=peak_large(m), step_times_s=[0.0123], samples_per_s=m / 0.0123 + 0.003)
           for m in (8, 16)]
    frame, _ = prepared(odd)
    assert figures.throughput_vs_effective_batch(frame, "samples") is not None
