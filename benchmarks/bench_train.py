"""SFT throughput with and without packing / padding-free, on the tiny model (CPU or GPU).

Puzzles of mixed size (N = 3..10 cells, 10..50 genes each) make conversations of very
different lengths, as real CellPuzzles do, so a padded batch wastes much of its compute.
The same records are trained for one epoch four ways, through `cello.train.sft.run_sft`:
padded batches, padding-free batches, and best-fit packing into rows of 4096 and of 1024
tokens; throughput is real (non-pad) tokens per second. On CPU (sdpa) a packed or
padding-free row is attended densely under a block-diagonal mask, so its attention costs
grow with the square of the row length: expect ratios below 1 there, and above 1 on a GPU
with flash-attn's variable-length kernels. Where CUDA is present, more figures: a ~0.5B Qwen2-shaped
model (random weights, built locally) in bf16, tokens/s/GPU padded, padding-free and packed; and
GRPO seconds per step with a local vLLM server (skipped when vllm is not installed).

    python benchmarks/bench_train.py            # prints ratios, writes benchmarks/results/bench_train.json
    python benchmarks/bench_train.py --records 400
    python benchmarks/bench_train.py --gpu-only --out gpu.json     # what scripts/gpu_check.sh runs
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"


def make_records(k: int, *, seed: int = 0, genes_max: int = 50) -> list[dict]:
    from cello.data.prompt import PromptTemplate
    from cello.llm.tiny import _HOUSEKEEPING, _MARKERS

    rng = random.Random(seed)
    tpl = PromptTemplate()
    types = sorted(_MARKERS)
    pool = sorted({g for v in _MARKERS.values() for g in v} | set(_HOUSEKEEPING))
    out = []
    for i in range(k):
        n = rng.randint(3, 10)
        answer = rng.sample(types, n)
        genes = [list(_MARKERS[t][:4]) + rng.sample(pool, rng.randint(6, genes_max - 4)) for t in answer]
        msgs = tpl.messages("", genes, sorted(answer)) + [{"role": "assistant", "content": tpl.render_answer(answer)}]
        out.append({"id": f"b{i}", "dataset": "bench", "n": n, "messages": msgs})
    return out


def real_tokens(model_dir: Path, records: list[dict]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(tok.apply_chat_template(r["messages"], tokenize=True,
                                           return_dict=True)["input_ids"]) for r in records)


def sft_tokens_per_s(model_dir: Path, data: Path, out: Path, *, mode: str, batch: int, precision: str = "auto",
                     max_length: int = 4096) -> float:
    from cello.config import SFTStageConfig
    from cello.train.sft import run_sft

    cfg = SFTStageConfig(
        model=str(model_dir), lora={"r": 16, "alpha": 32, "dropout": 0.0}, learning_rate=1e-4, epochs=1,
        max_length=max_length, effective_batch_size=batch, per_device_batch_size=batch, gradient_checkpointing=False,
        report_to=["none"], logging_steps=1000, save_steps=100000, eval_fraction=0.0, packing=mode == "packing",
        padding_free=mode == "padding_free", precision=precision, seed=0,
    )
    if out.exists():
        shutil.rmtree(out)
    result = run_sft(data, out, cfg=cfg)
    return result.runtime_s


def bench_cpu_modes(root: Path, n_records: int, batch: int) -> dict:
    from cello.llm.tiny import build_tiny_model

    records = make_records(n_records)
    data = root / "sft"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model = build_tiny_model(root / "tiny", corpus=[m["content"] for r in records[:200] for m in r["messages"]])
    tokens = real_tokens(model, records)
    out = {"records": n_records, "real_tokens": tokens, "per_device_batch": batch, "modes": {}}
    sft_tokens_per_s(model, data, root / "warmup", mode="padded", batch=batch)  # imports, caches
    for name, mode, max_length in (("padded", "padded", 4096), ("padding_free", "padding_free", 4096),
                                   ("packing", "packing", 4096), ("packing_1024", "packing", 1024)):
        runtime = sft_tokens_per_s(model, data, root / name, mode=mode, batch=batch, max_length=max_length)
        out["modes"][name] = {"seconds": round(runtime, 2), "tokens_per_s": round(tokens / runtime, 1),
                              "max_length": max_length}
        print(f"  {name:13s} {runtime:7.1f} s  {tokens / runtime:10.0f} tokens/s")
    padded = out["modes"]["padded"]["tokens_per_s"]
    out["ratio_padding_free_vs_padded"] = round(out["modes"]["padding_free"]["tokens_per_s"] / padded, 2)
    out["ratio_packing_vs_padded"] = round(out["modes"]["packing"]["tokens_per_s"] / padded, 2)
    out["ratio_packing_1024_vs_padded"] = round(out["modes"]["packing_1024"]["tokens_per_s"] / padded, 2)
    return out


def build_half_b_model(root: Path, tokenizer_dir: Path) -> Path:
    """A Qwen2.5-0.5B-shaped model with random weights (no hub), with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    out = root / "half-b"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def bench_gpu(root: Path, n_records: int) -> dict:
    """~0.5B bf16 SFT tokens/s/GPU padded, padding-free and packed (flash-attn when it imports,
    else sdpa); GRPO s/step with a vLLM server when vllm is installed."""
    import torch

    from cello.deps import is_available

    res: dict = {"device": torch.cuda.get_device_name(0), "flash_attn": is_available("flash_attn"), "modes": {}}
    model = build_half_b_model(root, root / "tiny")
    records = make_records(n_records)
    data = root / "gpu-data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tokens = real_tokens(model, records)
    sft_tokens_per_s(model, data, root / "gpu-warmup", mode="padded", batch=8, precision="bf16")  # kernels, caches
    for mode in ("padded", "padding_free", "packing"):
        runtime = sft_tokens_per_s(model, data, root / f"gpu-{mode}", mode=mode, batch=8, precision="bf16")
        res["modes"][mode] = {"seconds": round(runtime, 2), "tokens_per_s_per_gpu": round(tokens / runtime, 1)}
        print(f"  0.5B bf16 SFT {mode:13s} {runtime:7.1f} s  {tokens / runtime:10.0f} tokens/s/GPU")
    padded = res["modes"]["padded"]["tokens_per_s_per_gpu"]
    for mode in ("padding_free", "packing"):
        res[f"ratio_{mode}_vs_padded"] = round(res["modes"][mode]["tokens_per_s_per_gpu"] / padded, 2)
    res["sft_0.5b_bf16_tokens_per_s_per_gpu"] = max(m["tokens_per_s_per_gpu"] for m in res["modes"].values())
    if not is_available("vllm"):
        res["grpo_vllm"] = "skipped: vllm not installed"
        print("  GRPO with vLLM server: skipped (vllm not installed)")
        return res
    res["grpo_vllm_seconds_per_step"] = bench_grpo_vllm(root, model)
    return res


def bench_grpo_vllm(root: Path, model: Path, steps: int = 5) -> float:
    from cello.config import GRPOStageConfig
    from cello.train.grpo import run_grpo, wait_for_server

    recs = make_records(64, seed=1)
    data = root / "grpo"
    data.mkdir(exist_ok=True)
    rows = [{"id": r["id"], "prompt": r["messages"][:2], "answer": [r["messages"][2]["content"]]} for r in recs]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["trl", "vllm-serve", "--model", str(model), "--port", str(port),
                               "--gpu-memory-utilization", "0.3"])
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, timeout=600)
        cfg = GRPOStageConfig(model=str(model), vllm_server=url, max_steps=steps, prompts_per_step=8, num_generations=4,
                              per_device_batch_size=8, max_completion_length=256, report_to=["none"], logging_steps=1,
                              save_steps=100000, precision="bf16")
        result = run_grpo(data, root / "grpo-out", cfg=cfg)
        sps = round(result.runtime_s / result.global_step, 2)
        print(f"  GRPO with vLLM server: {sps} s/step")
        return sps
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=160, help="SFT records per mode.")
    ap.add_argument("--batch", type=int, default=8, help="Sequences per batch (CPU part).")
    ap.add_argument("--gpu-only", action="store_true", help="Only the GPU part (scripts/gpu_check.sh).")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON to write.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    result = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        if args.gpu_only:
            from cello.llm.tiny import build_tiny_model

            build_tiny_model(root / "tiny", corpus=[m["content"] for r in make_records(200) for m in r["messages"]])
        else:
            print(f"SFT on the tiny model, {args.records} records of mixed length, batch {args.batch}:")
            result["cpu_tiny"] = bench_cpu_modes(root, args.records, args.batch)
            cpu = result["cpu_tiny"]
            print(f"  padding-free / padded: {cpu['ratio_padding_free_vs_padded']}x, packing (4096) / padded: "
                  f"{cpu['ratio_packing_vs_padded']}x, packing (1024) / padded: {cpu['ratio_packing_1024_vs_padded']}x")
            if not torch.cuda.is_available():
                print("  (sdpa computes a packed row's attention densely under a block mask: "
                      "packing pays off with flash-attn varlen on GPU)")
        if torch.cuda.is_available():
            result["gpu"] = bench_gpu(root, args.records)
        else:
            result["gpu"] = "skipped: no CUDA device"
            print("GPU part (0.5B bf16 SFT tokens/s/GPU padded / padding-free / packed, GRPO s/step with vLLM): "
                  "skipped, no CUDA device")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
