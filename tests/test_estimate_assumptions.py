"""The estimate's device assumptions refuse values that make no sense, naming the --assume key."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.estimate_assumptions import MIB, assumptions_for


@pytest.mark.parametrize("key, value, message", [
    # float() reads 'nan' and 'inf'; the record would store null and the prediction be garbage
    ("host_op_seconds", "nan", "host_op_seconds takes a finite number"),
    ("host_op_seconds", "inf", "host_op_seconds takes a finite number"),
    ("launch_seconds", "-1e-6", "launch_seconds must be non-negative"),
    ("flop_efficiency", "0", "flop_efficiency must be positive"),
    ("peak_flops_bf16", "-1", "peak_flops_bf16 must be positive"),
    ("flop_efficiency", "2", "flop_efficiency is a fraction of the peak, at most 1"),
    # nothing usable: every case would be predicted out of memory ("usable -1.00 GiB")
    ("total_memory_bytes", "0", "total_memory_bytes (0 B) must be larger than reserve_bytes (1.00 GiB)"),
    ("reserve_bytes", "100TiB", "must be larger than reserve_bytes (100 TiB): nothing would be usable"),
    # a count is a whole number: 2.5 was read as a size and rounded to 2
    ("gemm_threads", "2.5", "gemm_threads takes a whole number (e.g. 2), got '2.5'"),
    ("gemm_threads", "abc", "gemm_threads takes a whole number (e.g. 2), got 'abc'"),
    ("gemm_threads", "-1", "gemm_threads must not be negative"),
    ("cublas_workspace_bytes", "abc", "cublas_workspace_bytes: not a size: 'abc'"),
    ("scratch_bytes", "2.5", "scratch_bytes takes a whole number of bytes"),
    ("attention_scratch", "maybe", "attention_scratch takes true or false"),
    # a factor either way: below 1 would put the interval's ends inside the ratio
    ("speed_ratio_error", "0.9", "speed_ratio_error must be a finite factor of at least 1"),
    ("speed_ratio_error", "inf", "speed_ratio_error takes a finite number"),
    # one unknown speed constant switched the step-time model off, without a word
    ("launch_seconds", "none", "launch_seconds takes a number (e.g. 989e12, 5e-6), got 'none': without it no step"),
])
def test_bad_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError) as caught:
        assumptions_for("h100", {key: value})
    assert message in str(caught.value), caught.value


def test_sensible_values_are_taken():
    a = assumptions_for("h100", {"host_tensor_seconds": "0", "scratch_bytes": "1.5KiB", "gemm_threads": "3",
                                 "total_memory_bytes": "24GiB", "reserve_bytes": "0"})
    assert (a.host_tensor_seconds, a.scratch_bytes, a.gemm_threads) == (0.0, 1536, 3)
    assert a.usable_memory_bytes == 24 << 30
    assert assumptions_for("h100", {"total_memory_bytes": "none"}).usable_memory_bytes is None
    assert assumptions_for("h100", {"cublas_workspace_bytes": "80e6"}).cublas_workspace_bytes == 80 * 10**6
    assert assumptions_for("a100", {"scratch_bytes": "1MiB"}).scratch_bytes == MIB
    assert assumptions_for("h100", {"speed_ratio_error": "1.1"}).speed_ratio_error == 1.1
    # Every kind that predicts speed says how far its predicted ratios may be off; cpu predicts none.
    assert all(assumptions_for(kind).speed_ratio_error > 1 for kind in ("h100", "h200", "a100"))
    assert assumptions_for("cpu").speed_ratio_error is None


def test_values_from_code_are_checked_too():
    h100 = assumptions_for("h100")
    for field, value, message in (("gemm_threads", 2.5, "gemm_threads must be a whole number"),
                                  ("cuda_autocast", "yes", "cuda_autocast must be true or false"),
                                  ("host_op_seconds", float("nan"), "host_op_seconds must be a finite number")):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(h100, **{field: value})


@pytest.mark.parametrize("command", ["estimate", "plan"])
def test_the_commands_exit_2_with_one_line_naming_the_key(command):
    args = {"estimate": ["estimate", "--workload", "mlp", "--micro-batch", "2", "--accum-steps", "1", "--list"],
            "plan": ["plan", "--workload", "mlp", "--effective-batch", "8", "--memory-budget", "1GiB"]}[command]
    result = CliRunner().invoke(main, [*args, "--assume", "host_op_seconds=nan"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: host_op_seconds takes a finite number (e.g. 989e12, 5e-6), got 'nan'"
    assert "Traceback" not in result.output
