"""Time one optimizer step alone on the GPU, against what the step-time model gives its ops.

On the H100 a whole training step took 2-3 ms more than one of its micro-steps (GPT-2 and the
ConvNets), and on the H200 GPT-2's about 2 ms, where the model gives the optimizer step and
zero_grad less than a micro-step's gradient adds (results/NVIDIA-H200/README.md). This check
says where that time goes. For each of the default suite's workloads it builds the case as the
harness does (`prepare_case`: the workload's optimizer, AdamW foreach), runs two steps so that
gradients and optimizer state exist, then times `optimizer.step()` and `zero_grad()` alone:

- `step_s`: CUDA events around each call, back to back (as the harness times steps): the
  longer of the host's issue time and the kernels' time;
- `host_s`: the host clock around each call, without synchronising: the host's issue time.

It predicts the same ops with the device kind's constants: the rows of the case's fake-step op
table outside the micro-steps (`OpTable.take(micro_step == OUTSIDE)`), with the kind's
`step_host_seconds` (the host time per step no aten op shows, fitted on the H100) included.

    python benchmarks/gpu/optimizer_step.py OUTDIR                # CUDA, under a minute
    python benchmarks/gpu/optimizer_step.py OUTDIR --device cpu   # dry run: tiny models, cpu clock

Writes OUTDIR/optimizer_step.json and prints a table.
"""

from __future__ import annotations

import json
import sys

import torch

from accumbench.cases import Case
from accumbench.estimate import estimate_cases
from accumbench.estimate_assumptions import assumptions_for
from accumbench.meters.base import WallClockTimer
from accumbench.runner import prepare_case
from accumbench.stats import StepTimes
from accumbench.steptime import OUTSIDE, predict_step_time
from accumbench.workloads import load_workload

# The timing of speed_constants.py, its neighbour here (run as a script, this folder is on sys.path).
from speed_constants import median_seconds, parse_check_arguments

# The default suite's workloads (bf16 on CUDA); the dry run's stand-ins are tiny.
WORKLOADS = [("gpt", (("size", "gpt2"),)), ("gpt", (("size", "small"),)), ("convnet-bn", (("size", "large"),)),
             ("convnet-gn", (("size", "large"),))]
DRY_WORKLOADS = [("gpt", (("size", "tiny"),)), ("convnet-bn", (("size", "tiny"),))]
REPEATS = 30


def optimizer_ops_prediction(case: Case, kind: str) -> dict[str, float]:
    """The step-time model's time for the case's ops outside the micro-steps."""
    tables = {}
    estimate_cases([case], assumptions_for(kind), on_profile=lambda c, profile: tables.__setitem__(c, profile.ops))
    table = tables[case]
    predicted = predict_step_time(table.take(table.micro_step == OUTSIDE), assumptions_for(kind).speed())
    return {"predicted_s": predicted.seconds, "predicted_host_s": predicted.host_seconds,
            "predicted_device_s": predicted.device_seconds, "predicted_kernels": predicted.kernels,
            "predicted_ops": predicted.ops}


def measure(case: Case, device: torch.device, cuda: bool) -> dict[str, float]:
    """Median times of the case's optimizer step and zero_grad, after two full steps."""
    prepared = prepare_case(case, load_workload(case.workload, case.options_dict), device)
    for _ in range(2):  # the optimizer state now exists
        prepared.step()
    optimizer = prepared.state.optimizer
    set_to_none = case.set_to_none
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def fresh_gradients() -> None:  # a step ends with zero_grad: the next one makes them anew
        for p in params:
            p.grad = torch.full_like(p, 1e-3)

    fresh_gradients()  # optimizer.step() keeps them: each timed call updates every parameter
    result = {
        "step_s": median_seconds(optimizer.step, REPEATS, cuda, warmup=3),
        "host_s": StepTimes(WallClockTimer().time_steps(optimizer.step, REPEATS)).median,
        "parameters": len(params),
    }
    # zero_grad(set_to_none=True) frees the gradients: time it on fresh ones each call.
    zero = []
    for _ in range(REPEATS):
        fresh_gradients()
        if cuda:
            torch.cuda.synchronize()
        zero.append(WallClockTimer().time_steps(lambda: optimizer.zero_grad(set_to_none=set_to_none), 1)[0])
    result["zero_grad_host_s"] = StepTimes(zero).median
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_check_arguments(__doc__, argv)
    cuda, kind = args.cuda, args.device_kind
    if cuda and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu for the dry run)", file=sys.stderr)
        return 2
    rows = []
    print(f"{'workload':<28} {'tensors':>7} {'step ms':>8} {'host ms':>8} {'zero_grad ms':>12} {'predicted ms':>12}")
    for spec, options in WORKLOADS if cuda else DRY_WORKLOADS:
        case = Case(spec, "large-batch", 8, 1, options, amp="bf16" if cuda else "none")
        row = {"workload": spec, "options": dict(options), **measure(case, torch.device(args.device), cuda),
               **optimizer_ops_prediction(case, kind)}
        rows.append(row)
        print(f"{spec + ' ' + ','.join(f'{k}={v}' for k, v in options):<28} {row['parameters']:>7} "
              f"{row['step_s'] * 1e3:>8.3f} {row['host_s'] * 1e3:>8.3f} {row['zero_grad_host_s'] * 1e3:>12.3f} "
              f"{row['predicted_s'] * 1e3:>12.3f}")
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu (dry run)", "device_kind": kind,
              "torch": torch.__version__, "repeats": REPEATS, "rows": rows}
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "optimizer_step.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.outdir / 'optimizer_step.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
