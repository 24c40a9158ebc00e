"""The model zoo: does the estimate equal the cpu meter on every causal-LM architecture that the
installed transformers ships (and, with --task, every masked-LM, encoder-decoder or image type)?

    nice python benchmarks/zoo.py --out results/zoo/             # every type, ~1 h on 2 cores
    python benchmarks/zoo.py --types mixtral,llama,gpt2 --out /tmp/zoo/
    python benchmarks/zoo.py --task image-cls --out results/zoo-image-cls/   # ~5 min
    accumbench run --device cpu --workload benchmarks/zoo.py:build --workload-opt model_type=olmoe \\
        --micro-batch 2 --accum-steps 1,2                         # one type, as a plug-in

For each model type in `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` it builds a tiny random-weight model
with `AutoModelForCausalLM.from_config` (the recipe: `TINY` below, applied to every attribute the
type's config has, on the config and its text sub-config), runs the same cases on the cpu meter
and with `accumbench estimate --device-kind cpu` (large batch mb=2 and accumulated 2 x 2, seq
32), and compares them to the byte. A type is skipped only when its tiny config cannot be built
(the reason is written). Each type runs in its own process with a time limit, so one hang or
crash costs one row. Output in `--out`: `cpu.jsonl`, `estimate.jsonl` (the records),
`table.md` (one row per type) and `summary.json` (tried, ran, estimated, byte-equal, every
failure with its reason).

With `--task masked-lm|seq2seq-lm|image-cls` the types are those of that task's Auto mapping,
each built by `accumbench.workloads.hf.hf_workload` (the model's own loss, HF's labels) from the
same tiny recipe, sequence 32 or 32 x 32 images, LayerDrop off (it skips layers at random in
training, so the two meters would drop different ones).

Mixture-of-experts types run with transformers' default experts implementation (`grouped_mm`:
sizes do not depend on routing). `--eager-moe TYPES` also runs those types with the per-expert
loop (`experts=eager`), where routing decides sizes: the cpu meter measures its real routing,
the estimate gives the peak under `moe_routing=balanced` and `worst`, and the table states the
gap between the cpu meter and `balanced`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accumbench import Workload  # noqa: E402

SEQ_LEN = 32
VOCAB = 512
# The tiny-config recipe: each attribute is set when the type's config has it.
TINY = {
    # width and depth
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "model_dim": 64, "embed_dim": 64,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "decoder_ffn_dim": 128, "d_ff": 128,
    "ffn_hidden_size": 128, "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2,
    "decoder_layers": 2,
    # attention
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "decoder_attention_heads": 4, "n_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "kv_channels": 16, "max_position_embeddings": 128,
    "n_positions": 128, "sliding_window": 16,
    # vocabulary
    "vocab_size": VOCAB,
    # mixture of experts: few, small experts
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_k": 2, "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
    "first_k_dense_replace": 1,
    # state-space models
    "state_size": 8, "expand": 2, "conv_kernel": 4, "time_step_rank": 8,
}
# Swept first (an interrupted sweep still covers them): the architectures people train most.
POPULAR = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
           "gemma3_text", "phi", "phi3", "gpt2", "gpt_neox", "falcon", "opt", "bloom", "starcoder2", "olmo2",
           "olmoe", "mamba", "mamba2", "granite", "cohere", "stablelm", "nemotron", "exaone4", "llama4_text",
           "gpt_oss", "deepseek_v3", "jamba", "dbrx"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# --task: the Auto mapping whose types are swept; LayerDrop off (see the module docstring).
TASK_MAPPINGS = {"masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
                 "seq2seq-lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                 "image-cls": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"}
NO_LAYERDROP = {"layerdrop": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
                "speech_encoder_layerdrop": 0.0}
IMAGE_SIZE = 32


def tiny_config(model_type: str, **overrides):
    """The type's default config shrunk by `TINY` (then `overrides`), token ids inside the vocab."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    targets = [config] + [getattr(config, name) for name in ("text_config", "decoder") if
                          hasattr(getattr(config, name, None), "to_dict")]
    for target in targets:
        for key, value in {**TINY, **overrides}.items():
            if hasattr(target, key) and not isinstance(getattr(target, key), (dict, list)):
                try:
                    setattr(target, key, value)
                except Exception:  # read-only properties of some configs
                    pass
        for key in list(vars(target)):
            token = getattr(target, key)
            if key.endswith("_token_id") and isinstance(token, int) and token >= VOCAB:
                setattr(target, key, VOCAB - 1)
        layer_types = getattr(target, "layer_types", None)
        if isinstance(layer_types, list) and "layer_types" in vars(target):
            target.layer_types = layer_types[: getattr(target, "num_hidden_layers", 2)]
    return config


def is_moe(config) -> bool:
    """True when the config (or its text config) declares routed experts."""
    text = getattr(config, "text_config", None) or config
    return any((getattr(c, key, 0) or 0) > 1 for c in (config, text) for key in MOE_KEYS)


def causal_lm_workload(config, name: str, seq_len: int = SEQ_LEN, experts: str | None = None) -> Workload:
    """A Workload around `AutoModelForCausalLM.from_config(config)`: random tokens, next-token
    cross-entropy on the logits. The committed sweep (results/zoo/) was made with this wrapper,
    written before `accumbench.workloads.hf` existed; moving to `hf_workload` (the model's own
    loss, labels) needs the sweep re-run, so it stays until then."""
    from transformers import AutoModelForCausalLM

    vocab = getattr(getattr(config, "text_config", None) or config, "vocab_size", VOCAB) or VOCAB
    if experts:
        config._experts_implementation = experts

    def build_model():
        return AutoModelForCausalLM.from_config(config)

    def make_batch(n: int, generator: torch.Generator):
        ids = torch.randint(0, vocab, (n, seq_len), generator=generator)
        return ids, ids

    def forward(model, batch, task=None):
        return model(input_ids=batch[0], use_cache=False).logits

    def loss(logits, batch):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[1][:, 1:].reshape(-1))

    from accumbench.workloads.hf import checkpoint_blocks

    return Workload(name=name, build_model=build_model, make_batch=make_batch, loss=loss, forward=forward,
                    tokens_per_sample=seq_len, options={"model_type": name},
                    checkpoint_blocks=checkpoint_blocks(AutoModelForCausalLM._model_mapping[type(config)]))


# An OLMoE-shaped mixture of experts of ~350M parameters (OLMoE-1B-7B: hidden 2048, 16 layers,
# 64 experts, top-8): the GPU check's model (benchmarks/gpu/moe_check.sh).
MOE_350M = {"hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 12, "num_key_value_heads": 12,
            "head_dim": 64, "intermediate_size": 512, "moe_intermediate_size": 512, "num_experts": 32,
            "num_local_experts": 32, "num_experts_per_tok": 4, "vocab_size": 32000,
            "max_position_embeddings": 4096}


def task_workload(model_type: str, task: str, seq_len: int = SEQ_LEN) -> Workload:
    """The tiny recipe's model of `model_type` for `task` (masked-lm, seq2seq-lm, image-cls) as
    `hf:` builds it, LayerDrop off."""
    from accumbench.workloads.hf import hf_workload

    config = tiny_config(model_type, **NO_LAYERDROP)
    sizes = {"image_size": IMAGE_SIZE} if task == "image-cls" else {"seq_len": seq_len}
    return hf_workload(config, task=task, name=f"zoo-{task}-{model_type}", **sizes)


def build(model_type: str = "llama", seq_len: int = SEQ_LEN, experts: str = "default", size: str = "tiny",
          task: str = "causal-lm") -> Workload:
    """Plug-in factory: `--workload benchmarks/zoo.py:build --workload-opt model_type=mixtral`
    (`size=moe-350m`: the GPU check's OLMoE-shaped model instead of the tiny recipe; `task`: the
    tiny model for another task, see `task_workload`)."""
    if task != "causal-lm":
        return task_workload(model_type, task, seq_len)
    if size not in ("tiny", "moe-350m"):
        raise ValueError(f"size must be tiny or moe-350m, got {size!r}")
    name = f"zoo-{model_type}" + ("" if experts == "default" else f"-{experts}") + ("" if size == "tiny" else f"-{size}")
    config = tiny_config(model_type, **(MOE_350M if size == "moe-350m" else {}))
    return causal_lm_workload(config, name, seq_len, None if experts == "default" else experts)


def build_vit(image_size: int = 32) -> Workload:
    """Plug-in factory: a tiny ViT image classifier (`ViTForImageClassification`)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=8, num_labels=10)
    return Workload(
        name="zoo-vit",
        build_model=lambda: ViTForImageClassification(config),
        make_batch=lambda n, g: (torch.randn(n, 3, image_size, image_size, generator=g),
                                 torch.randint(0, 10, (n,), generator=g)),
        loss=lambda logits, batch: F.cross_entropy(logits, batch[1]),
        forward=lambda model, batch, task=None: model(pixel_values=batch[0]).logits,
    )


# --- one type -------------------------------------------------------------------------------

def cases_for(spec: str, options: dict) -> list:
    """The zoo's cases for one workload: large batch mb=2 and accumulated 2 x 2."""
    from accumbench.cases import Case

    opts = tuple(sorted(options.items()))
    return [Case(spec, "large-batch", 2, 1, opts, warmup=1, steps=1),
            Case(spec, "accumulated", 2, 2, opts, warmup=1, steps=1)]


def run_one(model_type: str, experts: str, task: str = "causal-lm") -> dict:
    """Build, run on the cpu meter, estimate; the outcome and the records of one type."""
    from accumbench.estimate import estimate_cases
    from accumbench.estimate_assumptions import assumptions_for
    from accumbench.runner import Runner

    spec = f"{Path(__file__).resolve()}:build"
    options = {"model_type": model_type} if experts == "default" else {"model_type": model_type, "experts": experts}
    if task != "causal-lm":
        options["task"] = task
    try:
        config = tiny_config(model_type)
        workload = causal_lm_workload(config, "probe") if task == "causal-lm" else task_workload(model_type, task)
        workload.build_model()
    except Exception as exc:
        return {"type": model_type, "experts": experts, "outcome": "skipped",
                "reason": f"tiny config does not build: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    moe = is_moe(config)
    cases = cases_for(spec, options)
    cpu = [Runner(torch.device("cpu")).measure(case) for case in cases]
    estimate = estimate_cases(cases, assumptions_for("cpu"))
    return {"type": model_type, "experts": experts, "moe": moe,
            "cpu": [asdict(r) for r in cpu], "estimate": [asdict(r) for r in estimate]}


# --- judging ---------------------------------------------------------------------------------

def judge(result: dict) -> dict:
    """A row of the table: ran / estimated / byte-equal (or within the routing bound) and why not."""
    row = {"type": result["type"], "experts": result["experts"], "moe": result.get("moe", False)}
    if result.get("outcome") in ("skipped", "crashed", "not-reached"):
        return {**row, "outcome": result["outcome"], "reason": result["reason"]}
    cpu, est = result["cpu"], result["estimate"]
    bad = [r for r in cpu if r["status"] != "ok"]
    if bad:
        return {**row, "outcome": "cpu-failed", "reason": f"cpu meter: {bad[0]['error']}"}
    bad = [r for r in est if r["status"] != "ok"]
    if bad:
        return {**row, "outcome": "estimate-failed", "reason": f"estimate: {bad[0]['error']}"}
    pairs = list(zip(cpu, est))
    gaps = [(e["peak_allocated"] - c["peak_allocated"]) / c["peak_allocated"] for c, e in pairs]
    row.update(cpu_peaks=[c["peak_allocated"] for c, _ in pairs], estimate_peaks=[e["peak_allocated"] for _, e in pairs],
               worst_gap=max(gaps, key=abs))
    routing = [e["assumptions"].get("moe_routing_peaks") for _, e in pairs]
    if any(routing):
        row["routing_peaks"] = routing
    if all(c["peak_allocated"] == e["peak_allocated"] and c["baseline_allocated"] == e["baseline_allocated"]
           for c, e in pairs):
        return {**row, "outcome": "byte-equal"}
    if all(r and min(r.values()) <= c["peak_allocated"] <= max(r.values()) for r, (c, _) in zip(routing, pairs)):
        return {**row, "outcome": "within-routing-bound",
                "reason": f"routing-dependent sizes; cpu meter within the balanced..worst peaks, "
                          f"{max(abs(g) for g in gaps):.2%} from balanced"}
    c, e = next((c, e) for c, e in pairs if c["peak_allocated"] != e["peak_allocated"]
                or c["baseline_allocated"] != e["baseline_allocated"])
    return {**row, "outcome": "differs",
            "reason": f"{e['case_id'].split('/')[1]}: estimate {e['peak_allocated']} B vs cpu {c['peak_allocated']} B "
                      f"(baseline {e['baseline_allocated']} vs {c['baseline_allocated']})"}


def summarise(rows: list[dict], task: str = "causal-lm") -> dict:
    """Counts over the default-implementation rows, and every failure with its reason."""
    main = [r for r in rows if r["experts"] == "default"]
    ran = [r for r in main if r["outcome"] in ("byte-equal", "within-routing-bound", "differs", "estimate-failed")]
    estimated = [r for r in ran if r["outcome"] != "estimate-failed"]
    equal = [r for r in ran if r["outcome"] in ("byte-equal", "within-routing-bound")]
    return {
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        "task": task,
        "cases": f"large-batch mb=2 and accumulated mb=2 x2, "
                 f"{f'{IMAGE_SIZE}x{IMAGE_SIZE} images' if task == 'image-cls' else 'seq 32'}, AdamW(foreach), fp32"
                 + ("" if task == "causal-lm" else ", LayerDrop off"),
        "types": len(main), "not_reached": sum(r["outcome"] == "not-reached" for r in main),
        "tried": sum(r["outcome"] != "not-reached" for r in main),
        "skipped": sum(r["outcome"] == "skipped" for r in main),
        "ran_on_cpu_meter": len(ran), "estimated": len(estimated),
        "byte_equal": sum(r["outcome"] == "byte-equal" for r in ran),
        "within_routing_bound": sum(r["outcome"] == "within-routing-bound" for r in ran),
        "equal_share_of_ran": round(len(equal) / len(ran), 4) if ran else None,
        "moe_types_ran": sum(r["moe"] for r in ran),
        "failures": {r["type"] + ("" if r["experts"] == "default" else f" ({r['experts']})"): f"{r['outcome']}: {r['reason']}"
                     for r in rows if r["outcome"] not in ("byte-equal", "not-reached")},
        "not_reached_types": [r["type"] for r in rows if r["outcome"] == "not-reached"],
        "eager_moe": [{k: r.get(k) for k in ("type", "outcome", "cpu_peaks", "routing_peaks", "worst_gap")}
                      for r in rows if r["experts"] == "eager"],
    }


def table(rows: list[dict]) -> str:
    """The markdown table: one row per type and experts implementation."""
    lines = ["| type | experts | MoE | outcome | cpu peaks (B) | estimate peaks (B) | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peaks = lambda key: ", ".join(f"{p:,}" for p in r.get(key, [])) or "-"  # noqa: E731
        note = r.get("reason", "")
        if r.get("routing_peaks") and any(r["routing_peaks"]):
            note = (note + "; " if note else "") + "balanced/worst: " + ", ".join(
                f"{p['balanced']:,}/{p['worst']:,}" for p in r["routing_peaks"] if p)
        lines.append(f"| {r['type']} | {r['experts']} | {'yes' if r['moe'] else ''} | {r['outcome']} | "
                     f"{peaks('cpu_peaks')} | {peaks('estimate_peaks')} | {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Sweep the types (each in its own process), write the records, table and summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (default results/zoo, or results/zoo-TASK)")
    parser.add_argument("--types", help="comma-separated model types (default: every type of the task)")
    parser.add_argument("--task", default="causal-lm", choices=["causal-lm", *TASK_MAPPINGS],
                        help="the Auto mapping swept (default causal-lm; the others by hf_workload)")
    parser.add_argument("--eager-moe", default="mixtral,qwen3_moe,olmoe,qwen2_moe",
                        help="MoE types also run with the per-expert loop (routing decides sizes)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per type")
    parser.add_argument("--jobs", type=int, default=3, help="types run at once (each in its own process)")
    parser.add_argument("--summarise", action="store_true",
                        help="only write the table and summary from OUT/raw (what a sweep left)")
    parser.add_argument("--one", nargs=2, metavar=("TYPE", "EXPERTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / "results" / ("zoo" if args.task == "causal-lm" else f"zoo-{args.task}")
    if args.one:
        torch.set_num_threads(1)
        print(json.dumps(run_one(*args.one, args.task)))
        return 0
    from transformers.models.auto import modeling_auto

    mapping = getattr(modeling_auto, TASK_MAPPINGS.get(args.task, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"))
    types = args.types.split(",") if args.types else sorted(mapping, key=lambda t: (t not in POPULAR, t))
    eager = (args.eager_moe or "").split(",") if args.task == "causal-lm" else []
    jobs = [(t, "default") for t in types] + [(t, "eager") for t in eager if t and (not args.types or t in types)]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def one(job: tuple[str, str]) -> dict:
        model_type, experts = job
        t0 = time.perf_counter()
        try:
            result = pool.apply_async(run_one, (*job, args.task)).get(timeout=args.timeout)
        except multiprocessing.TimeoutError:
            result = {"type": model_type, "experts": experts, "outcome": "crashed",
                      "reason": f"took over {args.timeout} s"}
        except Exception as exc:  # the worker died or the result could not be sent back
            result = {"type": model_type, "experts": experts, "outcome": "crashed",
                      "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        result["seconds"] = round(time.perf_counter() - t0)
        (raw / f"{model_type}-{experts}.json").write_text(json.dumps(result) + "\n")
        print(f"{model_type} ({experts}): {judge(result)['outcome']} ({result.get('seconds', '-')} s)", flush=True)
        return result

    raw = args.out / "raw"
    raw.mkdir(exist_ok=True)
    if args.summarise:  # from what a (possibly interrupted) sweep left in OUT/raw
        done = {(r["type"], r["experts"]): r for r in (json.loads(p.read_text()) for p in raw.glob("*.json"))}
        results = [done.get(job, {"type": job[0], "experts": job[1], "outcome": "not-reached",
                                  "reason": "the sweep was stopped before this type"}) for job in jobs]
    else:
        # Forked workers that imported transformers once; a fresh one after every few types, so
        # what one model leaves behind (registries, caches) cannot grow without bound.
        import transformers  # noqa: F401
        import transformers.models.auto.modeling_auto  # noqa: F401

        torch.set_num_threads(1)
        with multiprocessing.get_context("fork").Pool(args.jobs, maxtasksperchild=8) as pool, \
                ThreadPoolExecutor(args.jobs) as threads:
            results = list(threads.map(one, jobs))
    rows = []
    with open(args.out / "cpu.jsonl", "w") as cpu_file, open(args.out / "estimate.jsonl", "w") as est_file:
        for index, result in enumerate(results, 1):
            for record in result.get("cpu", []):
                cpu_file.write(json.dumps(record) + "\n")
            for record in result.get("estimate", []):
                est_file.write(json.dumps(record) + "\n")
            rows.append(judge(result))
            print(f"[{index}/{len(jobs)}] {result['type']} ({result['experts']}): {rows[-1]['outcome']} "
                  f"{rows[-1].get('reason', '')[:150]} ({result.get('seconds', '-')} s)", flush=True)
    summary = summarise(rows, args.task)
    summary["wall_s"] = round(time.perf_counter() - started)
    (args.out / "table.md").write_text(table(rows))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("failures", "eager_moe")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
