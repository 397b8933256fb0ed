"""Tiny models, offline: a random-weight Qwen2 causal LM with a tokenizer trained on puzzles.

No model hub is reachable in tests or on a laptop, yet every stage loads its model with
`from_pretrained(dir)` exactly as it would load Qwen2.5-7B-Instruct on a cluster. This module
builds such a directory locally in a few seconds:

- a ByteLevel BPE tokenizer trained in memory on the puzzle corpus (so gene and cell-type
  names stay whole instead of being shredded into bytes), with the Qwen chat specials
  `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos), left padding, and a Qwen-style
  chat template whose assistant turns sit in `{% generation %}` blocks (assistant-only loss);
- a Qwen2 model (about 0.1-5M parameters) with seeded random weights, one attention head of
  size 64 by default: vLLM's CPU attention serves head sizes 32, 64, 80, ... but not 16, and the
  tests run the same directory behind a real vLLM server (tests/vllm).

    cello model tiny -o models/tiny                                  # built-in corpus
    cello model tiny -o models/tiny --corpus data/records/sft/train.jsonl

    from cello.llm.tiny import build_tiny_model
    path = build_tiny_model("models/tiny")        # then AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from cello._io import atomic_path, read_jsonl
from cello.config import TinyModelConfig
from cello.data.prompt import PromptTemplate
from cello.errors import InputError

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]

# Qwen-style ChatML. Assistant content and its <|im_end|> are inside {% generation %} so that
# apply_chat_template(..., return_assistant_tokens_mask=True) marks exactly the tokens a model
# must learn to produce (TRL's assistant_only_loss).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's own pre-tokenization (NFC, this split, byte level). transformers 5 loads any
# model_type="qwen2" directory with `Qwen2Tokenizer`, which rebuilds exactly this pipeline
# around the saved vocab and merges; training with the same one makes every loader agree.
# Letter runs merge into whole tokens ("LYZ", "monocyte"); digits stay single ("CD3E" is
# "CD" "3" "E"), as in the real Qwen2.5 tokenizer.
_PRETOKENIZE = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Facts used to make a built-in corpus that looks like CellPuzzles (marker genes by type).
_MARKERS = {
    "CD4-positive, alpha-beta T cell": ["CD3E", "CD3D", "CD4", "IL7R", "LTB", "TCF7", "CCR7", "MAL"],
    "CD8-positive, alpha-beta T cell": ["CD3E", "CD8A", "CD8B", "GZMK", "CCL5", "NKG7", "CD3G", "LINC02446"],
    "natural killer cell": ["NKG7", "GNLY", "GZMB", "PRF1", "KLRD1", "FCGR3A", "KLRF1", "CST7"],
    "B cell": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "IGHM", "PAX5", "HLA-DQA1"],
    "plasma cell": ["JCHAIN", "MZB1", "IGKC", "XBP1", "IGHG1", "TNFRSF17", "DERL3", "SDC1"],
    "classical monocyte": ["LYZ", "CD14", "S100A8", "S100A9", "VCAN", "FCN1", "CST3", "CSF3R"],
    "non-classical monocyte": ["FCGR3A", "MS4A7", "LST1", "AIF1", "CDKN1C", "RHOC", "IFITM3", "COTL1"],
    "conventional dendritic cell": ["FCER1A", "CLEC10A", "CD1C", "HLA-DRA", "HLA-DPB1", "CST3", "CLEC9A", "LAMP3"],
    "plasmacytoid dendritic cell": ["LILRA4", "IL3RA", "IRF7", "TCF4", "GZMB", "SERPINF1", "ITM2C", "PLD4"],
    "platelet": ["PPBP", "PF4", "GP9", "ITGA2B", "TUBB1", "GNG11", "CAVIN2", "NRGN"],
    "erythrocyte": ["HBB", "HBA1", "HBA2", "ALAS2", "CA1", "SLC4A1", "AHSP", "HBD"],
    "hematopoietic stem cell": ["CD34", "PROM1", "SPINK2", "CRHBP", "AVP", "MEIS1", "HLF", "SOX4"],
    "regulatory T cell": ["FOXP3", "IL2RA", "CTLA4", "TIGIT", "IKZF2", "RTKN2", "BATF", "CD3E"],
    "mucosal invariant T cell": ["SLC4A10", "KLRB1", "TRAV1-2", "ZBTB16", "NCR3", "RORC", "DUSP2", "CD3E"],
    "mast cell": ["TPSAB1", "TPSB2", "CPA3", "KIT", "HDC", "MS4A2", "GATA2", "CLC"],
    "endothelial cell": ["PECAM1", "VWF", "CDH5", "CLDN5", "PLVAP", "EGFL7", "RAMP2", "AQP1"],
    "fibroblast": ["COL1A1", "COL1A2", "DCN", "LUM", "COL3A1", "PDGFRA", "FBLN1", "MGP"],
    "epithelial cell": ["EPCAM", "KRT8", "KRT18", "KRT19", "CDH1", "CLDN4", "ELF3", "SPINT2"],
    "smooth muscle cell": ["ACTA2", "MYH11", "TAGLN", "DES", "CNN1", "MYLK", "LMOD1", "ACTG2"],
    "macrophage": ["CD68", "C1QA", "C1QB", "C1QC", "APOE", "MARCO", "MRC1", "CD163"],
}
_HOUSEKEEPING = [
    "MALAT1", "ACTB", "B2M", "TMSB4X", "EEF1A1", "RPL13A", "RPS27", "RPLP1", "FTL", "FTH1",
    "TPT1", "MT-CO1", "MT-CO3", "MT-ND4", "GAPDH", "HLA-B", "HLA-A", "RPS12", "RPL41", "PTMA",
]
_CONTEXTS = [
    "The cells come from a {age}-year-old {sex} donor, {tissue} tissue, {disease}.",
]
_SEXES, _TISSUES = ["male", "female"], ["blood", "lung", "bone marrow", "spleen", "lymph node"]
_DISEASES = ["normal", "COVID-19", "lupus", "influenza"]


def default_corpus(*, n_puzzles: int = 300, seed: int = 0, prompt: PromptTemplate | None = None) -> list[str]:
    """Texts that look like CellPuzzles prompts and answers, made from known marker genes."""
    prompt = prompt or PromptTemplate()
    rng = random.Random(seed)
    types = sorted(_MARKERS)
    texts = []
    for _ in range(n_puzzles):
        n = rng.randint(3, 10)
        answer = rng.sample(types, n)
        cell_genes = []
        for t in answer:
            genes = list(_MARKERS[t]) + rng.sample(_HOUSEKEEPING, 8)
            rng.shuffle(genes)
            cell_genes.append(genes)
        context = _CONTEXTS[0].format(
            age=rng.randint(20, 80), sex=rng.choice(_SEXES), tissue=rng.choice(_TISSUES), disease=rng.choice(_DISEASES)
        )
        texts.extend(m["content"] for m in prompt.messages(context, cell_genes, sorted(answer)))
        texts.append(prompt.render_answer(answer))
    return texts


def _record_texts(rec: dict, prompt: PromptTemplate) -> Iterator[str]:
    for key in ("messages", "prompt"):  # sft / eval: messages; grpo: prompt
        for m in rec.get(key) or []:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                yield m["content"]
    has_reply = any(isinstance(m, dict) and m.get("role") == "assistant" for m in rec.get("messages") or [])
    if rec.get("answer") and not has_reply:  # grpo / eval records: the gold answer in the paper's format
        yield prompt.render_answer([str(a) for a in rec["answer"]])


def load_corpus(path: str | os.PathLike, *, prompt: PromptTemplate | None = None) -> Iterator[str]:
    """Texts from SFT/GRPO/eval JSONL records, a puzzles.parquet, or a directory of those."""
    prompt = prompt or PromptTemplate()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".jsonl", ".parquet"})
        if not files:
            msg = f"{path}: no .jsonl or .parquet file inside; pass export records or puzzles.parquet."
            raise InputError(msg)
        for f in files:
            yield from load_corpus(f, prompt=prompt)
        return
    if not path.exists():
        msg = f"{path}: corpus file not found; pass export records (.jsonl) or puzzles.parquet."
        raise InputError(msg)
    if path.suffix == ".jsonl":
        for rec in read_jsonl(path):
            yield from _record_texts(rec, prompt)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        from cello.data import schema

        table = pq.read_table(path)
        need = [schema.CONTEXT, schema.CELL_GENES, schema.CANDIDATES, schema.ANSWER]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            msg = f"{path}: not a puzzles table (missing columns {missing}); pass puzzles.parquet or JSONL records."
            raise InputError(msg)
        for row in table.select(need).to_pylist():
            for m in prompt.messages(row[schema.CONTEXT] or "", row[schema.CELL_GENES], row[schema.CANDIDATES]):
                yield m["content"]
            yield prompt.render_answer(row[schema.ANSWER])
    else:
        msg = f"{path}: unknown corpus type {path.suffix!r}; use .jsonl records or a puzzles .parquet."
        raise InputError(msg)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2):
    """A ByteLevel BPE tokenizer with the chat specials, wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=1_000_000,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    corpus: Iterable[str] | None = None,
    cfg: TinyModelConfig | None = None,
    prompt: PromptTemplate | None = None,
) -> Path:
    """Build a tiny Qwen2 model + tokenizer and save them as a Hugging Face directory.

    `corpus`: texts to train the tokenizer on (e.g. `load_corpus(path)`); None: a built-in
    corpus of puzzle-like text. The prompt's system text and answer markup are always added,
    so the chat frame tokenizes compactly whatever the corpus. Same `cfg.seed`, same corpus:
    the same files. Returns `out_dir`.
    """
    import itertools

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = cfg or TinyModelConfig()
    prompt = prompt or PromptTemplate()
    texts = list(corpus) if corpus is not None else default_corpus(seed=cfg.seed, prompt=prompt)
    if cfg.max_texts is not None:
        texts = list(itertools.islice(texts, cfg.max_texts))
    texts += [prompt.system, prompt.render_answer(["A", "B"]), "system", "user", "assistant"]
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)

    pad_id, eos_id = tokenizer.convert_tokens_to_ids([PAD_TOKEN, EOS_TOKEN])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_std,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)

    n_params = sum(p.numel() for p in model.parameters())
    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp.chmod(0o755)  # a temp dir is private; a model dir is read by servers and other users
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():  # safetensors writes 0600: a non-root server could not read it
            f.chmod(0o644)
    log.info(
        "tiny model: %d parameters, vocab %d, %d corpus texts -> %s", n_params, len(tokenizer), len(texts), out_dir
    )
    return Path(out_dir)
