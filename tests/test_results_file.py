"""The results file every command writes (accumbench.results_file) and the run session: nothing
measured is lost, nothing is measured when the file cannot take it, one writer at a time."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records
from accumbench.results_file import LOCK_HOLDER_ENV, ResultsFile, ResultsFileError

CASE = ["--workload", "mlp", "--workload-opt", "size=tiny", "--micro-batch", "2"]
TINY = ["--device", "cpu", *CASE, "--steps", "1", "--warmup", "1"]


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, list(args), **kwargs)


@pytest.fixture(scope="module")
def one_record(tmp_path_factory) -> Path:
    """A results file holding one measured case (TINY, accumulation 1), made once."""
    out = tmp_path_factory.mktemp("one") / "one.jsonl"
    result = invoke("run", *TINY, "--accum-steps", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def copy_of(tmp_path, one_record):
    out = tmp_path / "r.jsonl"
    shutil.copy(one_record, out)
    return out


@pytest.fixture
def never_measure(monkeypatch):
    """Fail the test if any case is measured."""
    def refuse(*args, **kwargs):
        raise AssertionError("a case was measured")

    monkeypatch.setattr("accumbench.runner.Runner.measure", refuse)
    monkeypatch.setattr("accumbench.estimate.estimate_group", refuse)


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder no file can be created in: read-only for a normal user; as root (who ignores
    permissions) a sysfs folder."""
    if os.geteuid() == 0:
        yield Path("/sys/kernel")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["run", "estimate"])
@pytest.mark.parametrize("where", ["read-only folder", "under a file"])
def test_an_output_that_cannot_be_written_exits_2_before_anything_is_measured(
        tmp_path, unwritable_folder, never_measure, command, where):
    if where == "read-only folder":
        out = unwritable_folder / "r.jsonl"
    else:
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "r.jsonl"
    args = TINY if command == "run" else CASE
    result = invoke(command, *args, "--accum-steps", "1", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cannot write") and len(result.output.strip().splitlines()) == 1
    assert "[1/1]" not in result.output and "Traceback" not in result.output


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, never_measure):
    out = tmp_path / "r.jsonl"
    with ResultsFile(out, command="the first run") as first:
        first.claim()
        result = invoke("run", *TINY, "--accum-steps", "1", "--out", str(out), "--resume")
        assert result.exit_code == 2, result.output
        assert f"is being written by pid {os.getpid()}" in result.output and "the first run" in result.output
    assert not first.lock_path.exists()  # released: the lock file goes with the lock


def test_a_launcher_holds_the_lock_for_its_ranks(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    with ResultsFile(out) as launcher:
        launcher.lock()
        with pytest.raises(ResultsFileError, match="being written by"):
            ResultsFile(out).claim()
        monkeypatch.setenv(LOCK_HOLDER_ENV, str(launcher.lock_path.resolve()))
        rank0 = ResultsFile(out)
        assert rank0.claim() == set()
        rank0.release()


def test_resume_repairs_a_torn_last_line_and_keeps_the_fragment(copy_of, never_measure):
    fragment = '{"schema": 1, "run_id": "abc", "case_id": "mlp-ti'
    with open(copy_of, "a") as fh:
        fh.write(fragment)
    result = invoke("run", *TINY, "--accum-steps", "1", "--out", str(copy_of), "--resume")
    assert result.exit_code == 0, result.output
    assert "cut off and kept in" in result.output and "0 case(s)" in result.output
    assert len(read_records(copy_of)) == 1 and copy_of.read_text().endswith("}\n")
    assert copy_of.with_name("r.jsonl.torn").read_text() == fragment + "\n"


def test_a_full_disk_mid_run_stops_cleanly_and_keeps_every_complete_record(tmp_path, monkeypatch):
    import accumbench.results_file as results_file

    real, calls = results_file._write_line, []

    def fill_up(fh, line):
        calls.append(line)
        if len(calls) == 2:
            fh.write(line[:10].encode())  # a partial line reaches the file before the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, line)

    monkeypatch.setattr(results_file, "_write_line", fill_up)
    out = tmp_path / "r.jsonl"
    result = invoke("run", *TINY, "--accum-steps", "1,2,4", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "the disk is full" in result.output and "every complete record is kept" in result.output
    assert "--resume" in result.output and "Traceback" not in result.output
    assert "[3/3]" not in result.output  # stopped: the third case was not measured
    assert [r.accum_steps for r in read_records(out)] == [1]  # the partial line was cut away


@pytest.mark.parametrize("flag, value, setting", [("--steps", "2", "steps_setting"), ("--seed", "7", "seed"),
                                                   ("--warmup", "2", "warmup_steps")])
def test_resume_with_other_settings_is_refused_naming_them(copy_of, never_measure, flag, value, setting):
    args = [a for a in TINY]
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    result = invoke("run", *args, "--accum-steps", "1,2", "--out", str(copy_of), "--resume")
    assert result.exit_code == 2, result.output
    assert f"measured with {setting}=" in result.output and value in result.output
    assert len(read_records(copy_of)) == 1


def test_resume_holds_cases_the_file_has_not_yet_to_its_settings_too(copy_of, never_measure):
    # The file holds accumulation 1 only; asking for accumulation 2 alone with other steps would
    # leave one file with two step settings.
    args = [a if a != "1" or i != TINY.index("--steps") + 1 else "3" for i, a in enumerate(TINY)]
    result = invoke("run", *args, "--accum-steps", "2", "--out", str(copy_of), "--resume")
    assert result.exit_code == 2, result.output
    assert "measured with steps_setting='1'" in result.output and "steps_setting='3'" in result.output
    assert len(read_records(copy_of)) == 1


@pytest.mark.parametrize("command", ["run", "estimate"])
def test_resume_refuses_a_plugin_case_measured_with_other_options_its_id_does_not_show(
        tmp_path, plugin_path, monkeypatch, command):
    out = tmp_path / "r.jsonl"
    case = ["--workload", f"{plugin_path}:unnamed_width", "--micro-batch", "2", "--accum-steps", "1"]
    extra = ["--device", "cpu", "--steps", "1", "--warmup", "1"] if command == "run" else ["--device-kind", "cpu"]
    first = invoke(command, *case, *extra, "--workload-opt", "width=32", "--out", str(out))
    assert first.exit_code == 0, first.output
    monkeypatch.setattr("accumbench.runner.Runner.measure", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setattr("accumbench.estimate.estimate_group", lambda *a, **k: pytest.fail("estimated"))
    other = invoke(command, *case, *extra, "--workload-opt", "width=64", "--out", str(out), "--resume")
    assert other.exit_code == 2, other.output
    assert "measured with workload_options.width=32" in other.output and "workload_options.width=64" in other.output
    # An option given on one side only differs as well (the factory's default may be another).
    left_out = invoke(command, *case, *extra, "--out", str(out), "--resume")
    assert left_out.exit_code == 2 and "workload_options.width=32" in left_out.output
    assert "this run asks for workload_options.width=(not given)" in left_out.output
    same = invoke(command, *case, *extra, "--workload-opt", "width=32", "--out", str(out), "--resume")
    assert same.exit_code == 0, same.output
    assert len(read_records(out)) == 1


@pytest.mark.parametrize("command", ["run", "estimate"])
def test_resume_takes_the_same_command_whose_options_the_record_resolved(tmp_path, command):
    # A record keeps the factory's resolved options (padded=False, seq_len=32 for gpt tiny): a
    # request that leaves them to their defaults is the same request, not "given on one side only".
    out = tmp_path / "r.jsonl"
    extra = ["--device", "cpu", "--steps", "1", "--warmup", "1"] if command == "run" else ["--device-kind", "cpu"]
    case = ["--workload", "gpt", "--workload-opt", "size=tiny", "--micro-batch", "2"]
    assert invoke(command, *case, "--accum-steps", "1", *extra, "--out", str(out)).exit_code == 0
    again = invoke(command, *case, "--accum-steps", "1,2", *extra, "--out", str(out), "--resume")
    assert again.exit_code == 0, again.output
    ids = [r.case_id for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 3  # mb2 kept, then the large batch of 4 and 2 x 2 added
    other = invoke(command, *case, "--workload-opt", "padded=true", "--accum-steps", "1", *extra, "--out", str(out),
                   "--resume")  # another workload (gpt-tiny-padded): its own case, measured
    assert other.exit_code == 0, other.output


def test_resume_and_overwrite_exclude_each_other(copy_of, never_measure):
    result = invoke("run", *TINY, "--out", str(copy_of), "--resume", "--overwrite")
    assert result.exit_code == 2 and "--resume and --overwrite exclude each other" in result.output


def test_overwrite_never_destroys_an_earlier_backup(tmp_path):
    out = tmp_path / "r.jsonl"
    sidecar = tmp_path / "r.timelines.jsonl"
    for generation in ("first", "second", "third"):
        out.write_text(json.dumps({"generation": generation}) + "\n")
        sidecar.write_text(generation)
        with ResultsFile(out, overwrite=True) as results:
            results.claim()
    assert json.loads((tmp_path / "r.jsonl.bak").read_text())["generation"] == "first"
    assert json.loads((tmp_path / "r.jsonl.bak.1").read_text())["generation"] == "second"
    assert (tmp_path / "r.timelines.jsonl.bak.1").read_text() == "second"
    assert out.read_text() == ""  # the third was set aside too; the file starts afresh


def test_a_backups_records_find_the_timelines_that_were_set_aside_with_them(tmp_path):
    # The records name their sidecar as it was called when written; --overwrite then moves
    # both. A report of the backup must read the backup's sidecar, not the new run's.
    from accumbench.timeline import Timeline, append_timeline, sidecar_path, timelines_of

    out = tmp_path / "r.jsonl"
    for run in ("older", "old", "new"):
        with ResultsFile(out, overwrite=True) as results:
            results.claim()
        out.write_text(json.dumps({"run": run}) + "\n")  # stands for the run's records
        append_timeline(sidecar_path(out), Timeline(bytes=(0, 8), marks=(), source="tracker", case_id="c", run_id=run))
    reference = sidecar_path(out).name  # what every record's `timeline` field holds
    for path, run in ((out, "new"), (tmp_path / "r.jsonl.bak.1", "old"), (tmp_path / "r.jsonl.bak", "older")):
        assert list(timelines_of(path, reference)) == [("c", run)], path


def test_estimate_refuses_an_existing_file_without_a_flag(copy_of, never_measure):
    before = copy_of.read_text()
    result = invoke("estimate", *CASE, "--out", str(copy_of))
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output
    assert copy_of.read_text() == before


def test_check_refuses_an_existing_file_offering_its_own_flags(copy_of):
    result = invoke("check", "--workload", "mlp", "--out", str(copy_of))
    assert result.exit_code == 2 and "--append" in result.output and "--resume" not in result.output


@pytest.mark.parametrize("args", [["--suite", "smoke", "--micro-batch", "4"],
                                  ["--suite", "smoke", "--workload-opt", "size=tiny"],
                                  ["--accum-steps", "2"],  # the default suite, implied
                                  ["--suite", "smoke", "--workload", "mlp"]])
def test_case_defining_flags_with_a_suite_are_a_usage_error(tmp_path, args):
    result = invoke("run", "--device", "cpu", *args, "--out", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "--workload" in result.output


def test_a_plugin_can_import_a_module_next_to_it(tmp_path):
    from accumbench.workloads import load_workload

    (tmp_path / "my_layers.py").write_text("import torch\nWIDTH = 24\n"
                                           "def block():\n    return torch.nn.Linear(16, WIDTH)\n")
    (tmp_path / "my_model.py").write_text(
        "import torch, torch.nn.functional as F\nfrom accumbench import Workload\nimport my_layers\n"
        "def build():\n"
        "    return Workload(name='next-to', build_model=lambda: torch.nn.Sequential(my_layers.block(), "
        "torch.nn.Linear(my_layers.WIDTH, 4)),\n"
        "        make_batch=lambda n, g: (torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)),\n"
        "        loss=lambda out, batch: F.cross_entropy(out, batch[1]))\n")
    workload = load_workload(f"{tmp_path / 'my_model.py'}:build")
    assert workload.build_model()[0].out_features == 24
    assert str(tmp_path) not in __import__("sys").path  # importable while it loads only


def _workload(name, make_batch=None, forward=None):
    import torch.nn.functional as F

    from accumbench import Workload
    from accumbench.workloads.base import default_forward

    return Workload(name=name, build_model=lambda: torch.nn.Linear(8, 4),
                    make_batch=make_batch or (lambda n, g: (torch.randn(n, 8, generator=g),
                                                            torch.randint(0, 4, (n,), generator=g))),
                    loss=lambda out, batch: F.cross_entropy(out, batch[1]), forward=forward or default_forward)


def _measure(workload, accum_steps):
    from accumbench.cases import Case
    from accumbench.runner import Runner

    runner = Runner(torch.device("cpu"))
    runner._workloads._workloads[("w", ())] = workload
    return runner.measure(Case("w", "accumulated", 2, accum_steps, warmup=1, steps=1))


def test_a_nan_loss_makes_the_case_an_error_naming_the_micro_step():
    made: list = []  # [generator, batches made from it]: each build of the case starts afresh

    def batch(n, generator):
        entry = next((e for e in made if e[0] is generator), None) or made.append([generator, 0]) or made[-1]
        entry[1] += 1
        x = torch.randn(n, 8, generator=generator)
        if entry[1] == 2:  # the second micro-batch of the step holds a NaN
            x[0, 0] = float("nan")
        return x, torch.randint(0, 4, (n,), generator=generator)

    record = _measure(_workload("nan-loss", make_batch=batch), accum_steps=3)
    assert record.status == "error"
    assert "the loss is nan at micro-step 2 of 3, in optimizer step 1" in record.error
    assert "NonFiniteLoss" in record.traceback


def test_an_error_record_keeps_the_traceback():
    def forward(model, batch, task=None):
        return broken_layer(model, batch)

    def broken_layer(model, batch):
        raise ValueError("shape mismatch in my layer")

    record = _measure(_workload("raises", forward=forward), accum_steps=2)
    assert record.status == "error" and record.error == "ValueError: shape mismatch in my layer"
    assert "in broken_layer" in record.traceback and record.traceback.rstrip().endswith(
        "ValueError: shape mismatch in my layer")
    assert json.loads(record.to_json())["traceback"] == record.traceback


def test_a_complete_last_record_without_its_newline_is_kept_and_ended(copy_of):
    copy_of.write_text(copy_of.read_text().rstrip("\n"))  # written by a tool that omits the final newline
    with ResultsFile(copy_of, append=True) as results:
        results.claim()
        results.append(results.existing[0])
    assert len(read_records(copy_of)) == 2 and not copy_of.with_name("r.jsonl.torn").exists()


def test_resume_repairs_a_torn_last_line_of_the_timelines_sidecar_too(copy_of):
    # Timelines are appended to the sidecar as records to the file: a crash can cut either.
    from accumbench.timeline import Timeline, read_timelines, sidecar_path

    sidecar = sidecar_path(copy_of)
    whole = Timeline(bytes=(0, 64, 32), marks=((0, "forward", 0),), source="tracker", case_id="c", run_id="r")
    fragment = whole.to_json()[:40]
    sidecar.write_text(whole.to_json() + "\n" + fragment)
    results = ResultsFile(copy_of, resume=True)
    try:
        results.claim()
    finally:
        results.release()
    assert sidecar.read_text() == whole.to_json() + "\n"
    assert sidecar.with_name(sidecar.name + ".torn").read_text() == fragment + "\n"
    assert any(f"the last line of {sidecar} was incomplete" in note for note in results.notes)
    assert [t.case_id for t in read_timelines(sidecar)] == ["c"]


def test_an_interrupted_resume_says_what_it_wrote_and_what_the_file_holds(copy_of, monkeypatch):
    from accumbench.runner import Runner

    real = Runner.measure

    def measure(self, case):
        if case.accum_steps == 4:
            raise KeyboardInterrupt
        return real(self, case)

    monkeypatch.setattr(Runner, "measure", measure)
    result = invoke("run", *TINY, "--accum-steps", "1,2,4", "--out", str(copy_of), "--resume")
    assert result.exit_code == 130, result.output
    # The file held large-batch 2; this run wrote large-batch 4 and 8 and accumulated 2 x 2.
    assert f"interrupted: 3 record(s) written this run, 4 in all kept in {copy_of}" in result.output
    assert [(r.micro_batch, r.accum_steps) for r in read_records(copy_of)] == [(2, 1), (4, 1), (8, 1), (2, 2)]


def test_a_launcher_locks_a_file_whose_folders_do_not_exist_yet(tmp_path):
    # `run --nproc-per-node` locks before its ranks claim the file: as `run` does, it makes the folders.
    out = tmp_path / "new" / "deeper" / "r.jsonl"
    with ResultsFile(out) as results:
        results.lock()
        assert results.lock_path.exists()


def test_an_interrupt_inside_a_finalizer_is_delivered_after_it():
    # The trackers count each freed storage in a weakref.finalize callback; Ctrl-C landing in
    # one was printed as "Exception ignored in: <finalize ...>" and lost.
    import signal
    import weakref

    from accumbench.session import interrupts_outside_finalizers

    class Held:
        pass

    seen = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_outside_finalizers():
            held = Held()
            weakref.finalize(held, lambda: (signal.raise_signal(signal.SIGINT), seen.append("finalizer ran")))
            del held
            seen.append("after the free")
            for _ in range(200):  # the interrupt comes back a few milliseconds later
                time.sleep(0.01)
    assert seen == ["finalizer ran", "after the free"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_ends_a_run_as_ctrl_c_does_with_its_own_exit_code():
    import signal

    from accumbench.session import Terminated, interrupts_outside_finalizers

    with pytest.raises(Terminated) as stopped:
        with interrupts_outside_finalizers():
            signal.raise_signal(signal.SIGTERM)  # uncaught, it would end the process (exit 143)
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow  # a real process measuring gpt tiny, stopped after its first record: ~10 s on 2 cores
def test_a_run_stopped_by_sigterm_keeps_its_records_says_so_and_drops_the_lock(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "accumbench", "run", "--device", "cpu", "--workload", "gpt",
                             "--workload-opt", "size=tiny", "--scenario", "large-batch", "--micro-batch",
                             ",".join(str(n) for n in range(1, 25)), "--steps", "20", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and out.read_text().count("\n") >= 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    kept = read_records(out)
    assert 1 <= len(kept) < 24 and "Traceback" not in output
    assert f"stopped by SIGTERM: {len(kept)} record(s) written this run" in output and "--resume" in output
    assert not out.with_name(out.name + ".lock").exists()
