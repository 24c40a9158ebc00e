"""A sample of the model zoo (benchmarks/zoo.py) in CI: the estimate (`--device-kind cpu`)
equals the cpu meter to the byte on mixture-of-experts models, a ViT, a state-space model and
dense decoders, built from tiny transformers configs. Slow (transformers models on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from accumbench.cases import Case  # noqa: E402
from accumbench.estimate import estimate_cases  # noqa: E402
from accumbench.estimate_assumptions import assumptions_for  # noqa: E402
from accumbench.runner import Runner  # noqa: E402

ZOO = str(Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py")
SAMPLE = ["mixtral", "qwen3_moe", "olmoe", "mamba", "llama", "gpt2", "qwen2", "gemma"]


def zoo_case(factory: str, options=()) -> Case:
    return Case(f"{ZOO}:{factory}", "accumulated", 2, 2, tuple(options), warmup=1, steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("the_case", [zoo_case("build", (("model_type", t),)) for t in SAMPLE]
                         + [zoo_case("build_vit")], ids=SAMPLE + ["vit"])
def test_estimate_equals_the_cpu_meter_on_the_zoo_sample(the_case):
    measured = Runner(torch.device("cpu")).measure(the_case)
    (estimated,) = estimate_cases([the_case], assumptions_for("cpu"))
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert (estimated.peak_allocated, estimated.baseline_allocated, estimated.breakdown) == (
        measured.peak_allocated, measured.baseline_allocated, measured.breakdown)
    assert estimated.flops_per_step == measured.flops_per_step
    # grouped_mm experts: sizes do not depend on routing, so no routing bounds are stated
    assert "moe_routing_peaks" not in estimated.assumptions


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mixtral", "mamba", "gpt2"])
def test_checkpointing_the_layers_transformers_checkpoints_lowers_the_peak_the_estimate_sees(model_type):
    options = (("model_type", model_type),)
    checkpointed = Case(f"{ZOO}:build", "accumulated", 2, 2, options, warmup=1, steps=1, checkpoint="blocks")
    measured = Runner(torch.device("cpu")).measure(checkpointed)
    plain = Runner(torch.device("cpu")).measure(zoo_case("build", options))
    (estimated,) = estimate_cases([checkpointed], assumptions_for("cpu"))
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert measured.peak_allocated < plain.peak_allocated
    assert (estimated.peak_allocated, estimated.breakdown) == (measured.peak_allocated, measured.breakdown)
