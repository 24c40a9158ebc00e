"""Hugging Face transformers models as workloads: `--workload hf:<model>`, no plug-in to write.

`<model>` is resolved in this order (`resolve_hf_config`):

1. a local `config.json`, or a folder that holds one (read offline);
2. a committed example (`HF_EXAMPLES`, package data under `accumbench/hf_configs/`): tiny
   configs for tests and real shapes written from published hyper-parameters;
3. a transformers model type (`llama`, `gpt2`, `bert`, `vit`, `resnet`, ...) with its defaults,
   sized by the other workload options (`hf:llama --workload-opt hidden_size=2048`);
4. a Hub id (`meta-llama/Llama-3.2-1B`): `AutoConfig.from_pretrained(id)`, the config only,
   never the weights; needs the Hub to be reachable.

The model gets random weights from the config (`AutoModelFor<Task>.from_config`); the estimate
meter builds it under its fake-tensor mode like any workload, so no weight is ever allocated.
Batches are made on the host from the seeded generator: token ids and HF `labels` (-100 where
no loss is taken), an `attention_mask` when padded, or random images. The loss is the model's
own (`model(**batch).loss`): a mean over the micro-batch's valid labels, which is exactly what
HF Trainer computed per micro-batch before `num_items_in_batch`. `count_loss_elements` counts
those labels as HF's loss does (shifted by one for causal LMs), so `--loss-norm token` is
accumbench's sum / total-valid-tokens normalisation: what `num_items_in_batch` fixes.

`hf_workload(config, ...)` is the reusable part: any code holding a `PretrainedConfig` gets a
`Workload` from it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from accumbench.hf_configs import hf_example_path, hf_examples
from accumbench.workloads.base import Workload, WorkloadError, option_bool, option_int

IGNORE_INDEX = -100  # HF's (and torch's) ignore_index for labels
TASKS = ("causal-lm", "seq2seq-lm", "seq-cls", "token-cls", "masked-lm", "image-cls")
INSTALL_HINT = "pip install 'accumbench[hf]'"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_MAX_SEQ_LEN = 512  # the default sample length when the config allows more
DEFAULT_IMAGE_SIZE = 224  # for image models whose config has no image size (ResNet, ConvNeXt)
MASK_PROBABILITY = 0.15  # masked-lm: BERT's share of masked positions
# The Auto class of each task and the loss the model computes (HF's LOSS_MAPPING key, set on the
# model so that e.g. GPT2LMHeadModel, whose class name does not say ForCausalLM, takes it without
# a warning).
_AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "seq2seq-lm": "AutoModelForSeq2SeqLM",
                 "seq-cls": "AutoModelForSequenceClassification", "token-cls": "AutoModelForTokenClassification",
                 "masked-lm": "AutoModelForMaskedLM", "image-cls": "AutoModelForImageClassification"}
# (Encoder-decoder LMs compute their cross-entropy in their own forward: no loss type to set.)
_LOSS_TYPES = {"causal-lm": "ForCausalLM", "seq-cls": "ForSequenceClassification",
               "token-cls": "ForTokenClassification", "masked-lm": "ForMaskedLM", "image-cls": "ForImageClassification"}
# Which task an `architectures` entry of a config.json names.
_ARCHITECTURE_TASKS = (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
                       ("ForConditionalGeneration", "seq2seq-lm"), ("ForMaskedLM", "masked-lm"),
                       ("ForSequenceClassification", "seq-cls"), ("ForTokenClassification", "token-cls"),
                       ("ForImageClassification", "image-cls"))


def _transformers():
    """The transformers module, or a one-line WorkloadError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise WorkloadError(f"hf: workloads need the transformers package: {INSTALL_HINT}") from None
    return transformers


# --- configs -----------------------------------------------------------------------------------

def _looks_like_hub_id(model: str) -> bool:
    # owner/name with the characters the Hub allows; a bare name is a legacy id (gpt2, bert-base-uncased).
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", model) is not None


def resolve_hf_config(model: str, overrides: dict[str, Any] | None = None):
    """The `PretrainedConfig` for `model` (path, example, model type or Hub id; see the module
    docstring), with `overrides` (config attributes, e.g. hidden_size=2048) applied.

    Raises WorkloadError with one line: transformers missing, a name that is none of the four,
    the Hub unreachable, an override the config does not have.
    """
    transformers = _transformers()
    overrides = dict(overrides or {})
    path = Path(model).expanduser()
    local = path if path.exists() else hf_example_path(model)
    if local is not None:
        if local.is_dir() and not (local / "config.json").is_file():
            raise WorkloadError(f"hf:{model}: folder {local} holds no config.json")
        try:
            config, unused = transformers.AutoConfig.from_pretrained(
                str(local), local_files_only=True, return_unused_kwargs=True, **overrides)
        except Exception as exc:
            raise WorkloadError(f"hf:{model}: cannot read {local}: {_first_line(exc)}") from None
        _reject_unknown(model, config, unused)
        return config
    mapping = transformers.CONFIG_MAPPING
    if model in mapping:
        config_class = mapping[model]
        # num_labels sizes a classifier's head but is stored as id2label, so to_dict() omits it;
        # experts_implementation (eager: a loop over the experts, whose sizes the routing decides)
        # is a constructor argument stored under a private name.
        known = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {})) | {
            "num_labels", "experts_implementation"}
        _reject_unknown(model, None, {k: v for k, v in overrides.items() if k not in known})
        try:
            return transformers.AutoConfig.for_model(model, **overrides)
        except Exception as exc:
            raise WorkloadError(f"hf:{model}: invalid options {overrides}: {_first_line(exc)}") from None
    if not _looks_like_hub_id(model):
        raise WorkloadError(
            f"hf:{model}: not a config.json or folder, not an example ({', '.join(hf_examples())}), "
            "not a transformers model type and not a Hub id")
    try:
        with _quiet_hub_client():
            config, unused = transformers.AutoConfig.from_pretrained(model, return_unused_kwargs=True, **overrides)
    except Exception as exc:
        raise WorkloadError(
            f"hf:{model}: not a local path, example or model type, and its config could not be fetched "
            f"from the Hugging Face Hub ({_first_line(exc)}); pass a local config.json instead") from None
    _reject_unknown(model, config, unused)
    return config


@contextlib.contextmanager
def _quiet_hub_client() -> Iterator[None]:
    """The Hub client logs each retry of an unreachable Hub (five, over about 45 s) as a warning;
    the failure is reported once, as one line, by the caller."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _reject_unknown(model: str, config: Any, unused: dict[str, Any]) -> None:
    if unused:
        kind = type(config).__name__ if config is not None else "its config"
        raise WorkloadError(
            f"hf:{model}: unknown option(s) {', '.join(sorted(unused))}: neither a workload option "
            f"({', '.join(WORKLOAD_OPTIONS)}) nor an attribute of {kind}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def infer_task(config) -> str:
    """The task a config is made for: from its `architectures`, else the first Auto mapping
    (encoder-decoder LM, masked LM for a config that is no decoder, causal LM, masked LM, image
    classification) that knows its model type.
    Encoder-decoder only for an encoder-decoder config (`is_encoder_decoder`: T5, BART), as
    vision- and audio-language models' `...ForConditionalGeneration` are decoders over features."""
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    for architecture in getattr(config, "architectures", None) or ():
        for marker, task in _ARCHITECTURE_TASKS:
            if marker in architecture and (task != "seq2seq-lm" or encoder_decoder):
                return task
    from transformers.models.auto import modeling_auto as auto

    model_type = getattr(config, "model_type", None)
    seq2seq = auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES if encoder_decoder else {}
    if encoder_decoder and model_type not in seq2seq:
        # Whisper's type also maps to a causal LM: its decoder alone, not what fine-tuning trains.
        raise WorkloadError(
            f"cannot tell the task of a {model_type!r} config: an encoder-decoder whose encoder reads no "
            f"text (speech, images); pass task=one of {', '.join(TASKS)} to train what transformers has "
            "for it (causal-lm: the decoder alone)")
    masked = auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    # BERT, RoBERTa, ELECTRA... map to a causal LM too (their decoder mode, is_decoder=True); a
    # config that says it is no decoder is an encoder, pretrained and fine-tuned as a masked LM.
    encoder = masked if getattr(config, "is_decoder", None) is False else {}
    for task, names in (("seq2seq-lm", seq2seq), ("masked-lm", encoder),
                        ("causal-lm", auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), ("masked-lm", masked),
                        ("image-cls", auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)):
        if model_type in names:
            return task
    raise WorkloadError(f"cannot tell the task of a {model_type!r} config; pass task=one of {', '.join(TASKS)}")


def max_positions(config) -> int | None:
    """The longest sequence the config's position embeddings allow (None: not stated)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --- batches -----------------------------------------------------------------------------------

def _lengths(n: int, seq_len: int, padded: bool, generator: torch.Generator, low: int) -> torch.Tensor:
    """Valid length of each sample: all of seq_len, or (padded) drawn in [max(low, seq/8), seq]."""
    if not padded:
        return torch.full((n,), seq_len)
    return torch.randint(max(low, seq_len // 8), seq_len + 1, (n,), generator=generator)


def text_batch_maker(task: str, vocab_size: int, seq_len: int, padded: bool, pad_id: int, num_labels: int,
                     target_len: int | None = None) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    """Batch maker for the text tasks: a dict of `input_ids`, `labels` (HF's convention) and,
    when padded, `attention_mask`.

    Padded samples have a random valid length in [seq_len/8, seq_len] (at least 2, so a causal
    LM has a label to predict); pad positions hold `pad_id`, label -100 and mask 0, so
    micro-batches carry different numbers of valid labels. causal-lm: labels are the input ids
    (the model shifts them). masked-lm: 15% of the valid positions, and at least one per sample,
    are replaced by the last vocabulary id and labelled. seq-cls: one class per sample.
    token-cls: one class per token (named-entity tagging), -100 on pads.
    seq2seq-lm: labels are `target_len` other random ids, padded (-100) to their own random
    lengths as `DataCollatorForSeq2Seq` pads them; the model shifts them right into its
    decoder's input.
    """
    mask_id = vocab_size - 1

    def make_batch(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab_size, (n, seq_len), generator=generator)
        lengths = _lengths(n, seq_len, padded, generator, low=2)
        pad = torch.arange(seq_len).unsqueeze(0) >= lengths.unsqueeze(1)
        if task == "masked-lm":
            masked = torch.rand(n, seq_len, generator=generator) < MASK_PROBABILITY
            one = (torch.rand(n, generator=generator) * lengths).long()  # one sure position per sample
            masked[torch.arange(n), one] = True
            masked &= ~pad
            labels = torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX))
            ids = torch.where(masked, torch.full_like(ids, mask_id), ids)
        elif task == "seq-cls":
            labels = torch.randint(0, num_labels, (n,), generator=generator)
        elif task == "token-cls":
            labels = torch.randint(0, num_labels, (n, seq_len), generator=generator)
        elif task == "seq2seq-lm":
            labels = torch.randint(0, vocab_size, (n, target_len), generator=generator)
            target_lengths = _lengths(n, target_len, padded, generator, low=1)
            labels[torch.arange(target_len).unsqueeze(0) >= target_lengths.unsqueeze(1)] = IGNORE_INDEX
        else:
            labels = ids.clone()
        ids[pad] = pad_id
        if task in ("causal-lm", "masked-lm", "token-cls"):  # labels aligned with the input
            labels[pad] = IGNORE_INDEX
        batch = {"input_ids": ids, "labels": labels}
        if padded:
            batch["attention_mask"] = (~pad).long()
        return batch

    return make_batch


def image_batch_maker(channels: int, image_size: int, num_labels: int, dtype: torch.dtype
                      ) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    """Batch maker for image classification: `pixel_values` (n, C, H, W) in the weights' dtype
    and one class label per image."""

    def make_batch(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        pixels = torch.randn(n, channels, image_size, image_size, generator=generator).to(dtype)
        return {"pixel_values": pixels, "labels": torch.randint(0, num_labels, (n,), generator=generator)}

    return make_batch


def count_label_tokens(shift: bool) -> Callable[[dict[str, torch.Tensor]], int]:
    """How many labels HF's loss averages over: `labels != -100`, without the first position
    for causal LMs (HF shifts labels left by one inside the loss, so position 0 never counts)."""

    def count(batch: dict[str, torch.Tensor]) -> int:
        labels = batch["labels"]
        if shift:
            labels = labels[..., 1:]
        return int((labels != IGNORE_INDEX).sum())

    return count


def hf_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str | None = None) -> Any:
    """`model(**batch)`: HF models take the labels and return their own loss with the output."""
    return model(**batch)


def hf_loss(output: Any, batch: Any) -> torch.Tensor:
    """The model's own loss (HF's mean over the micro-batch's valid labels)."""
    return output.loss


@contextlib.contextmanager
def _skip_weight_init_on_fake_tensors(transformers) -> Iterator[None]:
    """Under a fake-tensor mode (the estimate meter), skip HF's random initialisation: fake
    tensors hold no values to initialise, and some initialisers read values (torch's
    `trunc_normal_` rejection-samples, which ViT uses), which fake tensors cannot do. Weight
    tying still runs (`init_weights` ties after `initialize_weights`), so shared storages stay
    shared, as in the real model."""
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is None:
        yield
        return
    model_class = transformers.PreTrainedModel
    original = model_class.initialize_weights
    model_class.initialize_weights = lambda self: None
    try:
        yield
    finally:
        model_class.initialize_weights = original


# --- the workload ------------------------------------------------------------------------------

def hf_workload(config, *, task: str | None = None, seq_len: int | None = None, padded: bool = False,
                dtype: str | torch.dtype | None = None, image_size: int | None = None,
                target_len: int | None = None, name: str | None = None) -> Workload:
    """A `Workload` for a transformers `PretrainedConfig`, with random weights (`from_config`).

    - `task`: causal-lm, seq2seq-lm, seq-cls, token-cls, masked-lm or image-cls (default: what the config's
      `architectures` name, else what its model type supports first).
    - `seq_len`: sample length of text tasks (default the config's maximum, at most 512).
    - `target_len`: seq2seq-lm's label length (default `seq_len`).
    - `padded`: variable-length samples, pads labelled -100 and masked out by `attention_mask`.
    - `dtype`: the weights' dtype (float32 by default; bfloat16, float16, float64).
    - `image_size`: image side for image tasks (default the config's `image_size`, else 224); the
      config's `image_size`, where it has one, is set to it, so the model is built for it.
    - `name`: the workload's name in case ids (default `hf-<model_type>`).

    Raises WorkloadError (one line) for an unknown task or dtype, or a sequence longer than the
    config's position embeddings.
    """
    transformers = _transformers()
    given = {"task": task, "seq_len": seq_len, "padded": padded, "dtype": dtype, "image_size": image_size,
             "target_len": target_len}
    typed = _typed_options(name or f"hf-{getattr(config, 'model_type', 'model')}", given)
    seq_len, padded, image_size, target_len = typed["seq_len"], typed["padded"], typed["image_size"], typed["target_len"]
    config = copy.deepcopy(config)
    task = task or infer_task(config)
    if task not in TASKS:
        raise WorkloadError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise WorkloadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    weight_dtype = dtype or torch.float32
    auto_class = getattr(transformers, _AUTO_CLASSES[task])
    # Fail now, not inside a case, when the model type has no model for this task.
    if type(config) not in auto_class._model_mapping:
        raise WorkloadError(f"transformers has no {task} model for a {config.model_type!r} config "
                            f"({_AUTO_CLASSES[task]}); choose another task")
    if target_len is not None and task != "seq2seq-lm":
        raise WorkloadError(f"target_len applies to seq2seq-lm, not {task}")
    options: dict[str, Any] = {"task": task, "padded": bool(padded)}
    if dtype is not None:
        options["dtype"] = str(weight_dtype).removeprefix("torch.")
    num_labels = int(getattr(config, "num_labels", 2))
    if task == "image-cls":
        if padded:
            raise WorkloadError("padded=true applies to text tasks, not image-cls")
        # CLIP- and SigLIP-style classifiers keep the image settings in their vision sub-config.
        vision = config if hasattr(config, "image_size") else getattr(config, "vision_config", None) or config
        configured = getattr(vision, "image_size", None)
        size = image_size or configured or DEFAULT_IMAGE_SIZE
        size = int(size[0] if isinstance(size, (list, tuple)) else size)  # some configs give (h, w)
        if image_size and configured is not None:
            # The model is built for its config's size (ViT's position embeddings refuse another).
            vision.image_size = [size, size] if isinstance(configured, (list, tuple)) else size
        channels = int(getattr(vision, "num_channels", 3))
        make_batch = image_batch_maker(channels, size, num_labels, weight_dtype)
        count = None
        tokens_per_sample = None
        options["image_size"] = size
        shape = f"{channels}x{size}x{size} images, {num_labels} classes"
    else:
        limit = max_positions(config)
        length = int(seq_len) if seq_len is not None else min(limit or DEFAULT_MAX_SEQ_LEN, DEFAULT_MAX_SEQ_LEN)
        if length < 2:
            raise WorkloadError(f"seq_len must be at least 2, got {length}")
        if limit is not None and length > limit:
            raise WorkloadError(f"seq_len={length} exceeds the config's {limit} positions")
        pad_id = config.pad_token_id if isinstance(getattr(config, "pad_token_id", None), int) else 0
        # Sequence classification of decoder models finds each sample's last token by the pad id.
        config.pad_token_id = pad_id
        targets = None
        if task == "seq2seq-lm":
            targets = int(target_len) if target_len is not None else length
            options["target_len"] = targets
            # The decoder's first input when the model shifts the labels right (T5: the pad id).
            if getattr(config, "decoder_start_token_id", None) is None:
                config.decoder_start_token_id = pad_id
        make_batch = text_batch_maker(task, int(config.vocab_size), length, bool(padded), pad_id, num_labels, targets)
        count = count_label_tokens(shift=task == "causal-lm") if task != "seq-cls" else \
            (lambda batch: int(batch["labels"].shape[0]))
        tokens_per_sample = length + (targets or 0)  # an encoder-decoder reads the source and the target
        options["seq_len"] = length
        shape = f"seq {length}" + (f" -> {targets}" if targets else "") + (", padded variable-length" if padded else "")

    # Training keeps no KV cache (as Trainer's recipes set): a cache holds every layer's keys and
    # values through the forward, which checkpointing would otherwise free (tiny Llama, 4 x 2,
    # checkpointed: a 2.51 MiB peak with the cache, 2.36 MiB without). Set before the model is
    # built: T5's and BART's decoders keep their own copy of the config, made at build time.
    for part in (config, getattr(config, "text_config", None), getattr(config, "decoder", None)):
        if getattr(part, "use_cache", None):
            part.use_cache = False

    # The class the Auto class would pick, built as it builds it (its own from_config fails where
    # the mapping names several classes and the config no architecture).
    model_class = _model_class(auto_class, config)

    def build_model() -> torch.nn.Module:
        # Quiet: from_config logs nothing the user can act on (generation defaults, tied weights).
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            with _skip_weight_init_on_fake_tensors(transformers):
                model = model_class._from_config(config, dtype=weight_dtype)
        finally:
            transformers.logging.set_verbosity(verbosity)
        if task in _LOSS_TYPES:
            model.loss_type = _LOSS_TYPES[task]
        return model.train()

    label = name or f"hf-{config.model_type}"
    return Workload(
        name=label,
        build_model=build_model,
        make_batch=make_batch,
        loss=hf_loss,
        tokens_per_sample=tokens_per_sample,
        forward=hf_forward,
        count_loss_elements=count,
        options=options,
        description=f"transformers {type(config).__name__.removesuffix('Config')} {task}, {shape}, "
                    f"random weights ({str(weight_dtype).removeprefix('torch.')})",
        checkpoint_blocks=checkpoint_blocks(model_class),
    )


def _model_class(auto_class, config) -> type:
    """The class `auto_class.from_config(config)` builds: the first, where the Auto mapping
    names several (LeViT's classifier, with and without its distillation head)."""
    mapped = auto_class._model_mapping[type(config)]
    return mapped[0] if isinstance(mapped, (list, tuple)) else mapped


def checkpoint_blocks(model_class: type) -> str | None:
    """What `--checkpoint blocks` checkpoints in a transformers model: the layer classes of its
    modeling module that transformers itself checkpoints (subclasses of `GradientCheckpointingLayer`,
    what `gradient_checkpointing_enable()` acts on: `LlamaDecoderLayer`, `GPT2Block`, `BertLayer`,
    `ViTLayer`), as a pattern; None where transformers checkpoints none (ResNet, ConvNeXt)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers before 4.52 has no such base class
        return None
    module = sys.modules.get(model_class.__module__)
    names = sorted(name for name, cls in vars(module).items()
                   if isinstance(cls, type) and issubclass(cls, GradientCheckpointingLayer)
                   and cls.__module__ == module.__name__) if module else []
    return "|".join(names) or None


WORKLOAD_OPTIONS = ("task", "seq_len", "padded", "dtype", "image_size", "target_len")


def _typed_options(workload: str, options: dict[str, Any]) -> dict[str, Any]:
    """The `WORKLOAD_OPTIONS` given, typed (padded a bool, seq_len and image_size ints); a value
    of the wrong type or range is a `WorkloadError` naming the option: a string for `padded`
    would be true, int('abc') would fail without naming seq_len, and image_size=0 would
    silently fall back to the config's size (`0 or default`)."""
    typed = dict(options)
    if typed.get("padded") is not None:
        typed["padded"] = option_bool(workload, "padded", typed["padded"])
    if typed.get("seq_len") is not None:
        typed["seq_len"] = option_int(workload, "seq_len", typed["seq_len"], minimum=2)  # a causal LM shifts by one
    if typed.get("image_size") is not None:
        typed["image_size"] = option_int(workload, "image_size", typed["image_size"])
    if typed.get("target_len") is not None:
        typed["target_len"] = option_int(workload, "target_len", typed["target_len"])
    if typed.get("task") is not None and not isinstance(typed["task"], str):
        raise WorkloadError(f"workload {workload}: option task takes one of {', '.join(TASKS)}, got {typed['task']!r}")
    dtype = typed.get("dtype")
    if dtype is not None and not isinstance(dtype, (str, torch.dtype)):
        raise WorkloadError(f"workload {workload}: option dtype takes one of {', '.join(DTYPES)}, got {dtype!r}")
    return typed


def _name_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(value)).strip("-")


def _option_text(value: Any) -> str:
    """An option's value as a case id shows it: a list's items joined by "_" (depths=2_2_6_2, not
    depths=-2-2-6-2, which reads as negative numbers), a table's as key-value (rope_parameters=
    rope_type-linear_factor-2.0)."""
    if isinstance(value, dict):
        return "_".join(f"{key}-{_option_text(item)}" for key, item in value.items())
    return "_".join(_option_text(item) for item in value) if isinstance(value, (list, tuple)) else str(value)


def hf(model: str, **options: Any) -> Workload:
    """The `hf:<model>` factory: `<model>` as `resolve_hf_config` takes it; options `task`,
    `seq_len`, `padded`, `dtype`, `image_size`, `target_len` (see `hf_workload`); any other
    option is a config attribute (hidden_size=2048, num_hidden_layers=4, ...).

    The name in case ids is `hf-<model>` (a Hub id's "/" as "--"), then the task when it is not
    the config's own, the sequence (and target) length and the image size when given, -padded,
    the dtype and the overrides.
    """
    if not model:
        raise WorkloadError(f"hf: needs a model, e.g. hf:gpt2-small (examples: {', '.join(hf_examples())})")
    workload_opts = {k: options.pop(k) for k in WORKLOAD_OPTIONS if k in options}
    # Typed before they name the workload: padded="false" from a suite is false, not "-padded".
    workload_opts = _typed_options(f"hf:{model}", workload_opts)
    config = resolve_hf_config(model, options)
    task = workload_opts.get("task")
    path = Path(model).expanduser()
    if path.exists():  # a local config: named by its folder
        base = path.resolve().parent.name if path.is_file() else path.resolve().name
    else:  # an example, a model type or a Hub id (owner/name as owner--name, as HF's cache does)
        base = model.replace("/", "--")
    parts = [f"hf-{_name_part(base)}"]
    if task is not None and task != infer_task_or_none(config):
        parts.append(_name_part(task))
    if workload_opts.get("seq_len") is not None:
        parts.append(f"s{workload_opts['seq_len']}")
    if workload_opts.get("target_len") is not None:
        parts.append(f"t{workload_opts['target_len']}")
    if workload_opts.get("image_size") is not None:
        parts.append(f"i{workload_opts['image_size']}")
    if workload_opts.get("padded"):
        parts.append("padded")
    if workload_opts.get("dtype") is not None:
        parts.append(_name_part(workload_opts["dtype"]))
    parts += [_name_part(f"{k}={_option_text(v)}") for k, v in sorted(options.items())]
    workload = hf_workload(config, name="-".join(parts), **workload_opts)
    return dataclasses.replace(workload, options={"model": model, **workload.options, **options})


def infer_task_or_none(config) -> str | None:
    """`infer_task`, or None when the config does not say."""
    try:
        return infer_task(config)
    except WorkloadError:
        return None


__all__ = ["TASKS", "count_label_tokens", "hf", "hf_example_path", "hf_examples", "hf_workload",
           "infer_task", "resolve_hf_config"]

