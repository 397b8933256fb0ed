"""`cello model ...`: model directories built locally.

    cello model tiny -o models/tiny
    cello model tiny -o models/tiny --corpus data/records/sft/train.jsonl --hidden 128 --layers 4
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE, option
from cello.config import TinyModelConfig, load_params, override

app = typer.Typer(help="Build model directories locally (no hub needed).", no_args_is_help=True)


# Options as module-level singletons (ruff B008); those that set a config field take their
# help and shown default from it (`option`).
_OUT = typer.Option(..., "--out", "-o", help="Output directory (a Hugging Face model dir).")
_CORPUS = typer.Option(
    None, "--corpus",
    help="Tokenizer corpus: export records (.jsonl), puzzles.parquet, or a directory of them. Repeatable. "
         "Default: built-in puzzle-like text.",
)
_HIDDEN = option(TinyModelConfig, "hidden_size", "--hidden")
_LAYERS = option(TinyModelConfig, "num_layers", "--layers")
_HEADS = option(TinyModelConfig, "num_heads", "--heads")
_KV_HEADS = option(TinyModelConfig, "num_kv_heads", "--kv-heads")
_INTERMEDIATE = option(TinyModelConfig, "intermediate_size", "--intermediate")
_VOCAB = option(TinyModelConfig, "vocab_size", "--vocab-size")
_SEED = option(TinyModelConfig, "seed", "--seed")


@app.command("tiny")
def tiny(
    out: Path = _OUT,
    corpus: list[Path] | None = _CORPUS,
    hidden: int | None = _HIDDEN,
    layers: int | None = _LAYERS,
    heads: int | None = _HEADS,
    kv_heads: int | None = _KV_HEADS,
    intermediate: int | None = _INTERMEDIATE,
    vocab_size: int | None = _VOCAB,
    seed: int | None = _SEED,
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """A random-weight Qwen2 model (~0.1-5M parameters) with a tokenizer trained on the puzzle corpus."""
    import itertools
    import json

    from cello.llm.tiny import build_tiny_model, load_corpus

    p = load_params(params, profile=profile)
    cfg = override(
        p.tiny_model, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        intermediate_size=intermediate, vocab_size=vocab_size, seed=seed,
    )
    texts = itertools.chain.from_iterable(load_corpus(c, prompt=p.prompt) for c in corpus) if corpus else None
    path = build_tiny_model(out, corpus=texts, cfg=cfg, prompt=p.prompt)
    c = json.loads((path / "config.json").read_text())
    typer.echo(
        f"tiny model -> {path}: vocab {c['vocab_size']}, hidden {c['hidden_size']}, layers {c['num_hidden_layers']}"
    )
