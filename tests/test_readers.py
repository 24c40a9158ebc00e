"""Every reader of results (report, compare, plan, baseline) refuses impossible values before
writing anything, skips a torn last line with a warning, and `report` leaves no stale files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import RecordError, read_records, write_records
from gate_helpers import record

MiB = 1 << 20


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def records(n: int = 3, prefix: str = "mlp/large-batch/mb"):
    """Large-batch records of a tiny model: enough for report's memory figure."""
    return [record(f"{prefix}{m}", peak=4 * MiB + m * MiB, scenario="large-batch", micro_batch=m, accum_steps=1,
                   effective_batch=m, times=(0.01 * m,) * 4) for m in (2, 4, 8)[:n]]


def write_with(path: Path, line_fields: dict, n: int = 3) -> Path:
    """A results file whose second line has `line_fields` written over it (JSON may hold NaN)."""
    write_records(path, records(n))
    lines = path.read_text().splitlines()
    data = json.loads(lines[1])
    data.update(line_fields)
    lines[1] = json.dumps(data)  # allow_nan: a NaN becomes the bare token NaN, as other writers do
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fields, named", [
    ({"samples_per_s": -5.0}, "samples_per_s"),
    ({"tokens_per_s": float("inf")}, "tokens_per_s"),
    ({"step_times_s": [0.01, float("nan")]}, "step_times_s"),
    ({"step_times_s": [0.01, -0.01]}, "step_times_s"),
    ({"peak_allocated": float("nan")}, "peak_allocated"),
    ({"peak_reserved": -1}, "peak_reserved"),
])
def test_impossible_values_are_refused_naming_file_and_line(tmp_path, fields, named):
    path = write_with(tmp_path / "r.jsonl", fields)
    with pytest.raises(RecordError, match=rf"r\.jsonl:2: {named} must (be a|hold) (non-negative|positive)"):
        read_records(path)


@pytest.mark.parametrize("fields, message", [
    ({"case_id": [1]}, "case_id must be a string, got [1]"),
    ({"case_id": None}, "case_id must be a string, got None"),
    ({"scenario": 7}, "scenario must be a string, got 7"),
    ({"workload": ""}, "workload must not be empty"),
    ({"micro_batch": 10**30}, "micro_batch is too large"),
    ({"micro_batch": 1e30}, "micro_batch must be a positive integer, got 1e+30"),
    ({"flops_per_step": 10**30}, "flops_per_step is too large"),
    ({"set_to_none": "yes"}, "set_to_none must be true or false, got 'yes'"),
    ({"amp": 3}, "amp must be a string, got 3"),
    ({"tasks": 5}, "tasks must be a list, got 5"),
    ({"step_times_s": 5}, "step_times_s must be a list, got 5"),
    ({"step_times_s": [0.01, 0.0]}, "step_times_s must hold positive finite numbers of seconds, got 0.0"),
    ({"median_step_time_ci_s": [1]}, "median_step_time_ci_s must be two non-negative numbers"),
    ({"breakdown": "x"}, "breakdown must be an object"),
    ({"breakdown": {"params": -1}}, "breakdown['params'] must be a non-negative integer"),
    ({"seed": 2**70}, "seed must be an integer of at most 64 bits"),
    ({"device_name": None}, "device_name must be a string, got None"),
    ({"workload_options": []}, "workload_options must be an object"),
])
def test_fields_of_the_wrong_type_are_refused_naming_file_and_line(tmp_path, fields, message):
    # Hand-edited files: before, these read fine and crashed report (TypeError, OverflowError)
    # or run --resume (an unhashable case id).
    path = write_with(tmp_path / "r.jsonl", fields)
    with pytest.raises(RecordError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}:2: ") and message in str(caught.value), caught.value


@pytest.mark.parametrize("command", ["report", "compare", "run --resume"])
def test_a_list_case_id_exits_2_with_one_line(tmp_path, command):
    bad = write_with(tmp_path / "r.jsonl", {"case_id": [1]})
    good = tmp_path / "good.jsonl"
    write_records(good, records())
    args = {"report": ["report", bad, "--out", tmp_path / "report"], "compare": ["compare", good, bad],
            "run --resume": ["run", "--device", "cpu", "--workload", "mlp", "--micro-batch", "2", "--accum-steps",
                             "1", "--steps", "1", "--out", bad, "--resume"]}[command]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:2: case_id must be a string, got [1]" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_every_committed_results_file_still_reads():
    # Records files only: the timelines sidecars (*.timelines.jsonl) are another format.
    root = Path(__file__).resolve().parents[1] / "results"
    paths = sorted(p for p in root.rglob("*.jsonl") if not p.name.endswith(".timelines.jsonl"))
    assert paths
    for path in paths:
        assert read_records(path), path


def test_report_of_a_negative_throughput_exits_2_naming_file_and_line_and_writes_nothing(tmp_path):
    path = write_with(tmp_path / "r.jsonl", {"samples_per_s": -5.0})
    out = tmp_path / "report"
    result = invoke("report", path, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}:2: samples_per_s must be a non-negative finite number")
    assert "Traceback" not in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_compare_with_a_nan_peak_exits_2(tmp_path):
    good = tmp_path / "base.jsonl"
    write_records(good, records())
    bad = write_with(tmp_path / "cur.jsonl", {"peak_allocated": float("nan")})
    result = invoke("compare", good, bad)
    assert result.exit_code == 2
    assert "cur.jsonl:2: peak_allocated must be a non-negative integer of bytes, got nan" in result.stderr


def test_plan_and_baseline_refuse_impossible_values(tmp_path):
    bad = write_with(tmp_path / "bad.jsonl", {"step_times_s": [-1.0]})
    plan = invoke("plan", "--results", bad, "--effective-batch", "8", "--memory-budget", "1GiB")
    assert plan.exit_code == 2 and "bad.jsonl:2: step_times_s" in plan.stderr
    baseline = invoke("baseline", "update", tmp_path / "base.jsonl", bad, "--yes")
    assert baseline.exit_code == 2 and "bad.jsonl:2: step_times_s" in baseline.stderr
    assert not (tmp_path / "base.jsonl").exists()


def test_compare_with_nothing_in_common_exits_2_with_one_line(tmp_path):
    write_records(tmp_path / "a.jsonl", records(prefix="mlp/large-batch/mb"))
    write_records(tmp_path / "b.jsonl", records(prefix="gpt/large-batch/mb"))
    result = invoke("compare", tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no case in common" in result.stderr and "has 3 case(s)" in result.stderr


def _tear(path: Path) -> None:
    """Append half a record without its newline: a run killed mid-write."""
    whole = read_records(path)[0].to_json()
    with open(path, "a") as fh:
        fh.write(whole[: len(whole) // 2])


def test_a_torn_last_line_is_skipped_with_a_warning_by_every_reader(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, records())
    _tear(path)
    warnings = []
    assert len(read_records(path)) == 3  # the default warning goes to stderr
    from accumbench.records import iter_records

    assert len(list(iter_records(path, warn=warnings.append))) == 3
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:4: skipped a torn last line")
    compare = invoke("compare", path, path)
    assert compare.exit_code == 0 and "r.jsonl:4: skipped a torn last line" in compare.stderr


def test_a_corrupt_line_in_the_middle_stays_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, records(1))
    _tear(path)
    with open(path, "a") as fh:
        fh.write("\n" + records(1)[0].to_json() + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:2: not valid JSON"):
        read_records(path)


def test_report_warns_about_a_torn_line_and_uses_the_rest(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, records())
    _tear(path)
    out = tmp_path / "report"
    result = invoke("report", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"warning: {path}:4: skipped a torn last line" in result.stderr
    assert "3 case(s)" in result.stdout
    assert (out / "memory_vs_effective_batch.png").is_file()


def test_report_twice_into_a_folder_removes_its_stale_figures_only(tmp_path):
    with_times, without = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(with_times, records())
    write_records(without, [dataclasses.replace(r, step_times_s=(), samples_per_s=None) for r in records()])
    out = tmp_path / "report"
    first = invoke("report", with_times, "--out", out)
    assert first.exit_code == 0, first.output
    assert (out / "throughput_vs_effective_batch.png").is_file()
    (out / "my-notes.txt").write_text("mine")
    (out / "old.png").write_text("not the report's")
    second = invoke("report", without, "--out", out)
    assert second.exit_code == 0, second.output
    assert not (out / "throughput_vs_effective_batch.png").exists()
    assert not (out / "throughput_vs_effective_batch.svg").exists()
    assert "removed 2 file(s) of an earlier report" in second.stderr
    assert (out / "memory_vs_effective_batch.png").is_file() and (out / "index.html").is_file()
    assert (out / "my-notes.txt").read_text() == "mine" and (out / "old.png").read_text() == "not the report's"
    # Nothing of the staging folder is left beside the report.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "report"]


def test_a_failing_report_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    write_records(path, records())
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.html").write_text("the earlier report")

    from accumbench.report import build

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(build, "render_summary", broken)  # where build_report looks it up
    with pytest.raises(RuntimeError, match="figure failed"):
        build.build_report([path], out)
    assert [p.name for p in out.iterdir()] == ["index.html"]
    assert (out / "index.html").read_text() == "the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "report"]


def test_report_into_a_file_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, records())
    from accumbench.report import ReportInputError, build_report

    with pytest.raises(ReportInputError, match="is a file"):
        build_report([path], path)
