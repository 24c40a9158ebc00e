"""`--workload hf:<model>`: Hugging Face transformers models from a config, on the CPU.

Tiny committed configs of four architectures (GPT-2, Llama, BERT, ViT): the cpu meter and the
estimate (`--device-kind cpu`) agree to the byte, accumulation adds exactly the gradients,
`check` finds HF Trainer's per-micro-batch mean over padded tokens and token normalisation
(= HF's `num_items_in_batch`) removes it; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("transformers")  # the [hf] extra; .ci/run installs it

from accumbench.cases import Case  # noqa: E402
from accumbench.cli import main  # noqa: E402
from accumbench.equivalence import CheckConfig, check_workload  # noqa: E402
from accumbench.equivalence.diagnose import loss_takes_num_items  # noqa: E402
from accumbench.estimate_assumptions import assumptions_for  # noqa: E402
from accumbench.meters.estimate import EstimateMeter  # noqa: E402
from accumbench.runner import Runner  # noqa: E402
from accumbench.workloads import WorkloadError, load_workload  # noqa: E402
from accumbench.workloads.hf import hf_example_path, hf_examples, hf_workload, infer_task, resolve_hf_config  # noqa: E402

# (spec, options): padded causal LMs, a masked LM, an image classifier.
ARCHITECTURES = {
    "gpt2": ("hf:gpt2-tiny", (("padded", True),)),
    "llama": ("hf:llama-tiny", (("padded", True),)),
    "bert": ("hf:bert-tiny", ()),
    "vit": ("hf:vit-tiny", ()),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cpu_runner() -> Runner:
    return Runner(torch.device("cpu"))


@pytest.fixture(scope="module")
def estimate_runner() -> Runner:
    return Runner(torch.device("cpu"), meter=EstimateMeter(assumptions_for("cpu")))


def measure(runner: Runner, spec: str, options, scenario: str, micro: int, accum: int):
    record = runner.measure(Case(spec, scenario, micro, accum, options, warmup=1, steps=1))
    assert record.status == "ok", record.error
    return record


# GPT-2 (a padded causal LM) in the default run; the other three, a few seconds each, marked slow.
@pytest.mark.parametrize("arch", [a if a == "gpt2" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHITECTURES])
def test_estimate_equals_cpu_meter_and_accumulation_adds_exactly_the_gradients(arch, cpu_runner, estimate_runner):
    spec, options = ARCHITECTURES[arch]
    # Micro-batches large enough that the peak is in the backward, not in the optimizer step.
    micro = 16 if arch == "vit" else 4
    large = measure(cpu_runner, spec, options, "large-batch", micro, 1)
    accumulated = measure(cpu_runner, spec, options, "accumulated", micro, 2)
    # The estimate builds the HF model on fake tensors: no weight allocated, same bytes counted.
    estimated = measure(estimate_runner, spec, options, "accumulated", micro, 2)
    assert (estimated.peak_allocated, estimated.breakdown) == (accumulated.peak_allocated, accumulated.breakdown)
    model = load_workload(spec, dict(options)).build_model()
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    # From the second micro-step on, the first one's gradients persist under the same activations:
    # that, and nothing else, is what accumulation adds to the peak.
    assert accumulated.breakdown["grads"] == grad_bytes
    if arch == "vit":
        # ViT's large-batch peak comes after the classifier head's backward (its [CLS] head is
        # tiny), so the head's and final norm's gradients are already there: 10x64+10+2x64 floats.
        assert large.breakdown["grads"] == (64 * 10 + 10 + 2 * 64) * 4
    else:
        assert large.breakdown["grads"] == 0  # the peak is where the backward starts
    assert accumulated.peak_allocated - large.peak_allocated == grad_bytes - large.breakdown["grads"]


# Model types beside the committed examples, shrunk by config options (a list as --workload-opt
# depths=[1,1] gives it). Swin's pooler hands its last layer norm a transposed gradient: before
# the estimate's layer-norm backward kernel, the estimate counted 4,096 B more than the cpu meter.
OTHER_ARCHITECTURES = {
    "swin": ("hf:swin", (("image_size", 32), ("embed_dim", 16), ("depths", [1, 1]),
                         ("num_heads", [2, 2]), ("window_size", 4))),
    "mistral": ("hf:mistral", (("hidden_size", 64), ("num_hidden_layers", 2), ("num_attention_heads", 4),
                               ("num_key_value_heads", 2), ("intermediate_size", 128), ("vocab_size", 1000),
                               ("seq_len", 32), ("padded", True))),
    "convnext": ("hf:convnext", (("image_size", 32), ("hidden_sizes", [8, 16]), ("depths", [1, 1]),
                                 ("num_stages", 2))),
    "deberta-v2": ("hf:deberta-v2", (("hidden_size", 64), ("num_hidden_layers", 2), ("num_attention_heads", 4),
                                     ("intermediate_size", 128), ("vocab_size", 1000), ("seq_len", 32))),
    # The image-classification mapping names two classes for LeViT (and DeiT): with and without
    # the distillation head. transformers' own from_config failed on a config naming none.
    "levit": ("hf:levit", (("image_size", 64), ("hidden_sizes", [16, 32, 48]), ("num_attention_heads", [1, 2, 3]),
                           ("depths", [1, 1, 1]), ("key_dim", [8, 8, 8]))),
}


@pytest.mark.parametrize("arch", [a if a == "swin" else pytest.param(a, marks=pytest.mark.slow)
                                  for a in OTHER_ARCHITECTURES])
def test_estimate_equals_cpu_meter_on_other_model_types(arch, cpu_runner, estimate_runner):
    spec, options = OTHER_ARCHITECTURES[arch]
    for scenario, micro, accum in (("large-batch", 4, 1), ("accumulated", 2, 2)):
        measured = measure(cpu_runner, spec, options, scenario, micro, accum)
        estimated = measure(estimate_runner, spec, options, scenario, micro, accum)
        assert (estimated.peak_allocated, estimated.breakdown) == (measured.peak_allocated, measured.breakdown)


# Encoder-decoder LMs (task seq2seq-lm): T5 with relative position buckets, BART with learned ones.
T5 = ("hf:t5", (("d_model", 32), ("d_ff", 64), ("num_layers", 2), ("num_heads", 2), ("d_kv", 16),
                ("vocab_size", 500), ("seq_len", 16), ("target_len", 8), ("padded", True), ("dropout_rate", 0.0)))
BART = ("hf:bart", (("d_model", 32), ("encoder_layers", 1), ("decoder_layers", 1), ("encoder_attention_heads", 2),
                    ("decoder_attention_heads", 2), ("encoder_ffn_dim", 64), ("decoder_ffn_dim", 64),
                    ("vocab_size", 500), ("seq_len", 16), ("padded", True)))


@pytest.mark.parametrize("model", [T5, pytest.param(BART, marks=pytest.mark.slow)], ids=["t5", "bart"])
def test_encoder_decoder_lms_train_on_their_labels_and_the_estimate_equals_the_cpu_meter(
        model, cpu_runner, estimate_runner):
    spec, options = model
    workload = load_workload(spec, dict(options))
    assert workload.options["task"] == "seq2seq-lm"  # inferred: an encoder-decoder config
    batch = workload.make_batch(4, torch.Generator().manual_seed(0))
    target_len = dict(options).get("target_len", dict(options)["seq_len"])
    assert batch["input_ids"].shape == (4, 16) and batch["labels"].shape == (4, target_len)
    assert workload.count_loss_elements(batch) == int((batch["labels"] != -100).sum())  # no shift
    assert workload.tokens_per_sample == 16 + target_len
    measured = measure(cpu_runner, spec, options, "accumulated", 2, 2)
    estimated = measure(estimate_runner, spec, options, "accumulated", 2, 2)
    assert (estimated.peak_allocated, estimated.breakdown) == (measured.peak_allocated, measured.breakdown)
    # No KV cache in the decoder, which keeps its own copy of the config: set after the build, the
    # first model built kept one (+ its keys and values at the peak) and the next did not.
    assert not workload.build_model().get_decoder().config.use_cache


def test_check_on_t5_names_its_loss_that_ignores_num_items_in_batch():
    # T5 (and BART) compute their mean cross-entropy in the forward: HF's num_items_in_batch fix
    # does not reach it, and the check says what to do instead.
    workload = load_workload(T5[0], dict(T5[1]))
    config = CheckConfig(accum_steps=(2,), micro_batch=2, loss_norm="both", optimizer_step=False, grad_scaler=False)
    mean, token = check_workload(workload, config)
    (cause,) = mean.causes
    assert cause.kind == "token-mean" and not mean.equivalent
    assert "ignores `num_items_in_batch`" in cause.fix and "compute_loss_func" in cause.fix
    assert token.rel_error <= 1e-12
    gpt2 = load_workload("hf:gpt2-tiny", {"padded": True})
    batch = gpt2.make_batch(2, torch.Generator().manual_seed(0))
    assert loss_takes_num_items(gpt2.build_model(), batch)
    assert not loss_takes_num_items(workload.build_model(), workload.make_batch(2, torch.Generator().manual_seed(0)))


def test_token_classification_tags_every_valid_token_and_berts_loss_ignores_num_items(cpu_runner, estimate_runner):
    spec, options = "hf:bert-tiny", (("task", "token-cls"), ("padded", True), ("num_labels", 5))
    workload = load_workload(spec, dict(options))
    batch = workload.make_batch(4, torch.Generator().manual_seed(0))
    assert batch["labels"].shape == batch["input_ids"].shape and int(batch["labels"].max()) < 5
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()  # every valid token tagged
    measured = measure(cpu_runner, spec, options, "accumulated", 2, 2)
    estimated = measure(estimate_runner, spec, options, "accumulated", 2, 2)
    assert (estimated.peak_allocated, estimated.breakdown) == (measured.peak_allocated, measured.breakdown)
    config = CheckConfig(accum_steps=(2,), micro_batch=2, loss_norm="both", optimizer_step=False, grad_scaler=False)
    mean, token = check_workload(workload, config)
    # BertForTokenClassification takes a plain CrossEntropyLoss in its forward: the count changes nothing.
    assert not mean.equivalent and "ignores `num_items_in_batch`" in mean.causes[0].fix
    assert token.rel_error <= 1e-12


def test_list_and_table_options_reach_the_config_and_read_plainly_in_the_name():
    spec, options = OTHER_ARCHITECTURES["swin"]
    assert load_workload(spec, dict(options)).name == "hf-swin-i32-depths=1_1-embed_dim=16-num_heads=2_2-window_size=4"
    # A table transformers fills in (rope_theta's default): the case hands the factory a copy it may change.
    # (An immutable one failed: "'immutable_dict' object does not support mutation".)
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    small = (("hidden_size", 32), ("intermediate_size", 64), ("num_attention_heads", 2), ("num_hidden_layers", 1),
             ("num_key_value_heads", 1), ("vocab_size", 100))
    case = Case("hf:llama", "large-batch", 2, 1, (("rope_parameters", rope), *small), warmup=1, steps=1)
    workload = load_workload(case.workload, case.options_dict)
    assert "-rope_parameters=rope_type-linear_factor-2.0_rope_theta-10000.0-" in workload.name
    assert workload.build_model().config.rope_parameters["factor"] == 2.0


def test_an_encoder_model_type_trains_as_a_masked_lm_not_as_its_decoder_mode():
    # transformers maps bert, roberta, electra... to a causal LM as well (BertLMHeadModel, for
    # is_decoder=True); chosen first, hf:bert trained a bidirectional encoder on next tokens.
    from transformers import AutoConfig

    assert [infer_task(AutoConfig.for_model(t)) for t in ("bert", "roberta", "electra", "llama", "gpt2", "t5")] == \
        ["masked-lm", "masked-lm", "masked-lm", "causal-lm", "causal-lm", "seq2seq-lm"]


def test_a_model_type_the_auto_mapping_gives_two_classes_builds_the_first():
    workload = load_workload("hf:deit", {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
                                         "num_attention_heads": 2, "intermediate_size": 64})
    assert type(workload.build_model()).__name__ == "DeiTForImageClassification"


def test_image_size_builds_the_model_for_that_size():
    # ViT's position embeddings are sized by its config's image_size: without setting it, 48x48
    # images fail ("Input image size (48*48) doesn't match model (32*32)").
    workload = load_workload("hf:vit-tiny", {"image_size": 48})
    model = workload.build_model()
    images = workload.make_batch(2, torch.Generator().manual_seed(0))["pixel_values"]
    assert images.shape == (2, 3, 48, 48)
    assert model(pixel_values=images).logits.shape == (2, 10)
    # CLIP keeps its image size in its vision sub-config (set here by a JSON table option).
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    clip = load_workload("hf:clip", {"task": "image-cls", "image_size": 32, "vision_config": {**small, "patch_size": 8},
                                     "text_config": small})
    pixels = clip.make_batch(2, torch.Generator().manual_seed(0))["pixel_values"]
    assert clip.build_model()(pixel_values=pixels).logits.shape[0] == 2 and pixels.shape[-1] == 32


def test_check_finds_hf_trainers_padded_mean_loss_and_token_norm_removes_it():
    workload = load_workload("hf:gpt2-tiny", {"padded": True})
    config = CheckConfig(accum_steps=(2,), micro_batch=2, loss_norm="both", optimizer_step=False, grad_scaler=False)
    mean, token = check_workload(workload, config)
    assert (mean.loss_norm, token.loss_norm) == ("mean", "token")
    assert mean.rel_error > 1e-3 and not mean.equivalent and mean.explained
    (cause,) = mean.causes
    assert cause.kind == "token-mean"
    assert "num_items_in_batch" in cause.fix and "HF Trainer" in cause.summary
    assert mean.counterfactuals["token-norm"] <= 1e-12
    assert token.rel_error <= 1e-12
    # Counts as HF's loss counts them: labels != -100 after the shift (position 0 never counts).
    assert sum(mean.loss_elements) == sum(int((b["labels"][:, 1:] != -100).sum())
                                          for b in [workload.make_batch(4, torch.Generator().manual_seed(0))])


def test_check_in_float32_on_llama_token_norm_within_1e_6():
    workload = load_workload("hf:llama-tiny", {"padded": True})
    config = CheckConfig(accum_steps=(4,), micro_batch=2, loss_norm="both", dtype="float32", optimizer_step=False,
                         grad_scaler=False)
    mean, token = check_workload(workload, config)
    assert mean.rel_error > 1e-2 and [c.kind for c in mean.causes] == ["token-mean"]
    assert token.rel_error <= 1e-6 and mean.counterfactuals["token-norm"] <= 1e-6


def test_token_norm_is_hf_num_items_in_batch():
    """accumbench's token weights (count_i / total) give HF's own fixed loss: the model called
    with num_items_in_batch = the window's valid labels, summed over the micro-batches."""
    workload = load_workload("hf:llama-tiny", {"padded": True})
    torch.manual_seed(0)
    model = workload.build_model().double()
    batches = [workload.make_batch(2, torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
    counts = [workload.count_loss_elements(b) for b in batches]
    assert len(set(counts)) > 1
    total = sum(counts)
    ours = sum(model(**b).loss * (c / total) for b, c in zip(batches, counts))
    hf_fixed = sum(model(**b, num_items_in_batch=torch.tensor(total)).loss for b in batches)
    torch.testing.assert_close(ours, hf_fixed, rtol=1e-12, atol=0)


def test_batches_follow_hf_conventions():
    causal = load_workload("hf:llama-tiny", {"padded": True, "seq_len": 16}).make_batch(8, torch.Generator().manual_seed(0))
    ids, labels, mask = causal["input_ids"], causal["labels"], causal["attention_mask"]
    assert ids.shape == labels.shape == mask.shape == (8, 16)
    assert ((labels == -100) == (mask == 0)).all() and (labels[mask == 1] == ids[mask == 1]).all()
    assert len(set(mask.sum(1).tolist())) > 1  # variable lengths
    masked = load_workload("hf:bert-tiny", {}).make_batch(4, torch.Generator().manual_seed(0))
    assert ((masked["labels"] != -100).sum(1) >= 1).all() and (masked["input_ids"][masked["labels"] != -100] == 255).all()
    image = load_workload("hf:vit-tiny", {"dtype": "bfloat16"})
    batch = image.make_batch(2, torch.Generator().manual_seed(0))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["pixel_values"].dtype == torch.bfloat16
    assert image.count_loss_elements is None and image.options["dtype"] == "bfloat16"
    assert next(image.build_model().parameters()).dtype == torch.bfloat16


def test_a_model_types_experts_implementation_is_an_option():
    # The per-expert loop (routing decides sizes) of an MoE type: refused as "neither a workload
    # option nor an attribute", since the config stores it under a private name.
    config = resolve_hf_config("mixtral", {"num_local_experts": 4, "experts_implementation": "eager"})
    assert config._experts_implementation == "eager"


def test_model_names_resolve_to_configs(tmp_path):
    # A committed example, the same file by path and by folder, a model type with options.
    example = resolve_hf_config("gpt2-tiny")
    copy = tmp_path / "mine"
    copy.mkdir()
    shutil.copy(hf_example_path("gpt2-tiny"), copy / "config.json")
    same = {k: v for k, v in example.to_dict().items() if k != "_name_or_path"}
    assert {k: v for k, v in resolve_hf_config(str(copy)).to_dict().items() if k != "_name_or_path"} == same
    assert resolve_hf_config(str(copy / "config.json")).n_embd == 64
    assert load_workload(f"hf:{copy}", {}).name == "hf-mine"
    sized = load_workload("hf:llama", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                       "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 128,
                                       "seq_len": 8})
    assert sized.name == "hf-llama-s8-hidden_size=32-intermediate_size=64-num_attention_heads=2-" \
                         "num_hidden_layers=1-num_key_value_heads=1-vocab_size=128"
    assert sized.options["hidden_size"] == 32 and sized.options["task"] == "causal-lm"
    assert sum(p.numel() for p in sized.build_model().parameters()) > 0
    # Real shapes: the published sizes.
    llama = resolve_hf_config("llama-3.2-1b")
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_key_value_heads, llama.vocab_size) == (2048, 16, 8, 128256)
    assert resolve_hf_config("vit-b-16").num_labels == 1000
    assert {"gpt2-small", "llama-3.2-1b", "qwen2.5-0.5b", "bert-base", "vit-b-16"} <= set(hf_examples())


def test_hub_id_fetches_the_config_only_and_says_so_when_unreachable(monkeypatch):
    import transformers

    calls = []

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        if name == "acme/offline":
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection")
        return transformers.AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                 n_positions=16), {}

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    workload = load_workload("hf:acme/tiny-gpt", {})
    assert workload.name == "hf-acme--tiny-gpt" and calls[0][0] == "acme/tiny-gpt"
    with pytest.raises(WorkloadError) as info:
        load_workload("hf:acme/offline", {})
    message = str(info.value)
    assert "\n" not in message and "Hugging Face Hub" in message and "local config.json" in message


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("args, message", [
    (["--workload", "hf:no such model!"], "error: hf:no such model!: not a config.json or folder, not an example"),
    (["--workload", "hf:gpt2-tiny", "--workload-opt", "hidden_sise=8"], "error: hf:gpt2-tiny: unknown option(s) hidden_sise"),
    (["--workload", "hf:gpt2-tiny", "--workload-opt", "task=translate"], "error: unknown task 'translate'"),
    (["--workload", "hf:gpt2-tiny", "--workload-opt", "seq_len=4096"], "error: seq_len=4096 exceeds the config's 32 positions"),
    (["--workload", "hf:vit-tiny", "--workload-opt", "task=causal-lm"], "error: transformers has no causal-lm model"),
    # A string was true ('maybe'), int() failed without naming the option, 0 fell back to the config's size.
    (["--workload", "hf:gpt2-tiny", "--workload-opt", "padded=maybe"],
     "error: workload hf:gpt2-tiny: option padded takes true or false (also yes/no, on/off, 1/0), got 'maybe'"),
    (["--workload", "hf:gpt2-tiny", "--workload-opt", "seq_len=abc"],
     "error: workload hf:gpt2-tiny: option seq_len takes a whole number, got 'abc'"),
    (["--workload", "hf:vit-tiny", "--workload-opt", "image_size=0"],
     "error: workload hf:vit-tiny: option image_size must be at least 1, got 0"),
    (["--workload", "hf:vit-tiny", "--workload-opt", "dtype=5"], "error: workload hf:vit-tiny: option dtype takes one of"),
    (["--workload", "hf:gpt2-tiny", "--workload-opt", "target_len=8"], "error: target_len applies to seq2seq-lm, not causal-lm"),
    # Whisper's type maps to a causal LM too (its decoder alone): not a guess to make silently.
    (["--workload", "hf:whisper"], "error: cannot tell the task of a 'whisper' config: an encoder-decoder whose encoder"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke("estimate", "--device-kind", "cpu", *args, "--micro-batch", "2", "--accum-steps", "1")
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def test_boolean_text_from_a_suite_means_what_it_says():
    # padded = "false" in a suite's options is false: no "-padded" in the name, no padding.
    workload = load_workload("hf:gpt2-tiny", {"padded": "false", "seq_len": "16"})
    assert workload.name == "hf-gpt2-tiny-s16" and workload.options["padded"] is False
    assert load_workload("hf:gpt2-tiny", {"padded": "yes"}).options["padded"] is True


def test_missing_transformers_is_one_line_and_exit_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    result = invoke("run", "--device", "cpu", "--workload", "hf:gpt2-tiny", "--micro-batch", "2", "--accum-steps", "1")
    assert result.exit_code == 2
    assert result.output == "error: hf: workloads need the transformers package: pip install 'accumbench[hf]'\n"


def test_help_lists_the_examples():
    result = invoke("run", "--help")
    assert "hf:<model>" in result.output and "llama-3.2-1b" in result.output


def test_reusable_from_a_config_object():
    """What other code (the model zoo) uses: a PretrainedConfig in, a Workload out."""
    import transformers

    config = transformers.AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=64, vocab_size=64, max_position_embeddings=16)
    workload = hf_workload(config, task="seq-cls", seq_len=8, padded=True)
    assert workload.name == "hf-bert" and workload.tokens_per_sample == 8
    batch = workload.make_batch(3, torch.Generator().manual_seed(0))
    assert batch["labels"].shape == (3,) and workload.count_loss_elements(batch) == 3
    loss = workload.loss(workload.forward(workload.build_model(), batch), batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert json.dumps(workload.options)  # recorded with every result


# --- activation checkpointing -----------------------------------------------------------------------

def test_checkpoint_blocks_means_the_layers_transformers_checkpoints():
    from accumbench.levers import LeverError, Levers, checkpointed_modules, with_levers

    expected = {"gpt2": ("GPT2Block", "transformer.h"), "llama": ("LlamaDecoderLayer", "model.layers"),
                "bert": ("BertLayer", "bert.encoder.layer"), "vit": ("ViTLayer", "vit.layers")}
    for arch, (spec, options) in ARCHITECTURES.items():
        workload = load_workload(spec, dict(options))
        pattern, prefix = expected[arch]
        assert workload.checkpoint_blocks == pattern
        model = with_levers(workload, Levers(checkpoint="blocks")).build_model()
        layers = [f"{prefix}.{i}" for i in range(model.config.num_hidden_layers)]
        assert checkpointed_modules(model) == layers, arch
    # transformers checkpoints no layer of a ResNet: --checkpoint blocks asks for a pattern.
    resnet = load_workload("hf:resnet", {"depths": [1, 1], "hidden_sizes": [8, 16], "embedding_size": 8})
    assert resnet.checkpoint_blocks is None
    with pytest.raises(LeverError, match="does not say what its blocks are"):
        with_levers(resnet, Levers(checkpoint="blocks")).build_model()


@pytest.mark.slow  # three Llama cases, measured and estimated: ~2.7 s
def test_checkpointing_a_causal_lm_saves_memory_the_estimate_sees_to_the_byte(cpu_runner, estimate_runner):
    spec, options = ARCHITECTURES["llama"]
    plain = measure(cpu_runner, spec, options, "accumulated", 4, 2)
    checkpointed = cpu_runner.measure(Case(spec, "accumulated", 4, 2, options, warmup=1, steps=1, checkpoint="blocks"))
    assert checkpointed.status == "ok", checkpointed.error
    # No KV cache in training: with one, every layer's keys and values stayed alive through the
    # forward, on top of what checkpointing keeps (0.15 MiB more here).
    assert checkpointed.peak_allocated < plain.peak_allocated - 2**19
    estimated = estimate_runner.measure(Case(spec, "accumulated", 4, 2, options, warmup=1, steps=1,
                                             checkpoint="blocks"))
    assert (estimated.peak_allocated, estimated.breakdown) == (checkpointed.peak_allocated, checkpointed.breakdown)


def test_training_builds_no_kv_cache():
    model = load_workload("hf:llama-tiny").build_model()
    assert model.config.use_cache is False
    batch = load_workload("hf:llama-tiny").make_batch(2, torch.Generator().manual_seed(0))
    assert model(**batch).past_key_values is None


def test_lora_adapts_gpt2s_conv1d_layers(cpu_runner, estimate_runner):
    from accumbench.levers import Levers, LoRALinear, with_levers

    spec, options = ARCHITECTURES["gpt2"]
    plain = load_workload(spec, dict(options))
    levered = with_levers(plain, Levers(lora="r=4,targets=c_attn"))
    torch.manual_seed(0)
    base = plain.build_model()
    torch.manual_seed(0)
    model = levered.build_model()
    adapted = [m for m in model.modules() if isinstance(m, LoRALinear)]
    # GPT-2's c_attn is transformers' Conv1D (weight in x out = 64 x 192): one adapter per layer.
    assert len(adapted) == model.config.n_layer
    assert all((m.lora_A.shape, m.lora_B.shape) == ((4, 64), (192, 4)) for m in adapted)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == model.config.n_layer * 4 * (64 + 192)
    batch = plain.make_batch(2, torch.Generator().manual_seed(0))
    with torch.no_grad():  # B starts at zero: the adapted model starts as the base model
        assert torch.equal(model.eval()(**batch).logits, base.eval()(**batch).logits)
    # Accumulation adds the adapters' gradients and nothing else; the estimate sees the same bytes.
    case = dict(warmup=1, steps=1, lora="r=4,targets=c_attn")
    large = cpu_runner.measure(Case(spec, "large-batch", 4, 1, options, **case))
    accumulated = cpu_runner.measure(Case(spec, "accumulated", 4, 2, options, **case))
    estimated = estimate_runner.measure(Case(spec, "accumulated", 4, 2, options, **case))
    grads = sum(p.numel() * p.element_size() for p in trainable)
    assert accumulated.breakdown["grads"] == grads and accumulated.peak_allocated - large.peak_allocated == grads
    assert (estimated.peak_allocated, estimated.breakdown) == (accumulated.peak_allocated, accumulated.breakdown)


def test_the_help_names_every_task_the_hf_workload_takes():
    from accumbench.hf_configs import TASK_NAMES
    from accumbench.workloads.hf import TASKS

    assert sorted(TASK_NAMES.split("|")) == sorted(TASKS)
