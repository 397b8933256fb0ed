"""cello.llm.tiny and `cello model tiny`: builds, reloads offline, generates, masks assistant tokens."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cello._io import write_jsonl
from cello.cli import main
from cello.config import TinyModelConfig
from cello.data.prompt import PromptTemplate
from cello.errors import InputError
from cello.llm.tiny import EOS_TOKEN, PAD_TOKEN, build_tiny_model, load_corpus, train_tokenizer
from tests.conftest import defaults_params

GENES = [["CD3E", "MS4A1", "LYZ", "NKG7"], ["LYZ", "CD14", "MS4A1", "CD3E"]]
TYPES = ["B cell", "T cell"]
CONVERSATION = [
    {"role": "system", "content": "You annotate cells."},
    {"role": "user", "content": "Cell 1: CD3E, LYZ"},
    {"role": "assistant", "content": "<think>T cell markers</think>\n<answer>T cell</answer>"},
    {"role": "user", "content": "And cell 2: MS4A1"},
    {"role": "assistant", "content": "<answer>B cell</answer>"},
]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def test_builds_and_reloads_as_hf_dir(tiny_model_dir):
    tok, model = _load(tiny_model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 5_000_000
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tok)
    assert tok.padding_side == "left"
    assert (tok.eos_token, tok.pad_token) == (EOS_TOKEN, PAD_TOKEN)
    assert tok.eos_token_id != tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_default_head_size_is_one_vllm_serves_on_cpu(tmp_path):
    """vLLM's CPU attention refuses head_dim 16 ("Unsupported CPU attention configuration")."""
    cfg = json.loads((build_tiny_model(tmp_path / "m", cfg=TinyModelConfig(max_texts=50)) / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0


def test_generates_from_chat_prompt(tiny_model_dir):
    import torch

    tok, model = _load(tiny_model_dir)
    enc = tok.apply_chat_template(
        [CONVERSATION[:2], CONVERSATION[:4]],
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and 1 <= out.shape[1] - enc["input_ids"].shape[1] <= 5
    assert enc["input_ids"][0, 0].item() == tok.pad_token_id  # the shorter prompt is padded on the left


def test_chat_template_marks_only_assistant_tokens(tiny_model_dir):
    tok, _ = _load(tiny_model_dir)
    out = tok.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and 0 < sum(mask) < len(ids)
    marked = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    replies = [m["content"] + EOS_TOKEN for m in CONVERSATION if m["role"] == "assistant"]
    assert marked == "".join(replies)
    unmarked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "You annotate cells." in unmarked and "T cell markers" not in unmarked


def test_chat_template_generation_prompt(tiny_model_dir):
    tok, _ = _load(tiny_model_dir)
    text = tok.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou annotate cells.<|im_end|>\n<|im_start|>user\nCell 1: CD3E, LYZ<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template(CONVERSATION[:2], tokenize=False).endswith("assistant\n")


def test_every_loader_tokenizes_alike(tiny_model_dir):
    """transformers loads qwen2 dirs with Qwen2Tokenizer, which rebuilds the pre-tokenizer: it must agree."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = PromptTemplate().render_user("donor: 40 years", GENES, TYPES) + " 123 ünïcode"
    auto = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = PreTrainedTokenizerFast.from_pretrained(tiny_model_dir)
    assert auto(text)["input_ids"] == plain(text)["input_ids"]
    assert auto.decode(auto(text)["input_ids"]) == text


def test_gene_names_stay_whole_when_in_corpus():
    corpus = [PromptTemplate().render_user("", GENES, TYPES)] * 20 + ["classical monocyte"] * 5
    tok = train_tokenizer(corpus, vocab_size=600)
    assert tok.tokenize(" LYZ") == ["ĠLYZ"]
    assert tok.tokenize(" CD3E") == ["ĠCD", "3", "E"]  # digits stay single, as in Qwen's tokenizer
    assert len(tok.tokenize(" MS4A1")) == 4
    assert len(tok.tokenize(" monocyte")) == 1


def test_default_model_knows_marker_genes(tiny_model_dir):
    tok, _ = _load(tiny_model_dir)
    pieces = {gene: len(tok.tokenize(" " + gene)) for gene in ["CD3E", "MS4A1", "LYZ", "NKG7", "HLA-DRA", "CD14"]}
    assert pieces == {"CD3E": 3, "MS4A1": 4, "LYZ": 1, "NKG7": 2, "HLA-DRA": 2, "CD14": 3}  # bytes: 5 6 4 5 8 5


def test_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    cfg = TinyModelConfig(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, vocab_size=400)
    a = build_tiny_model(tmp_path / "a", cfg=cfg)
    b = build_tiny_model(tmp_path / "b", cfg=cfg)
    c = build_tiny_model(tmp_path / "c", cfg=cfg.model_copy(update={"seed": 1}))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert any((wa[k] != wc[k]).any() for k in wa if wa[k].shape == wc[k].shape)


def _records(tmp_path):
    p = PromptTemplate()
    msgs = p.messages("ctx", GENES, TYPES)
    answer = {"role": "assistant", "content": p.render_answer(["T cell", "B cell"])}
    sft = {"id": "a", "dataset": "d", "n": 2, "messages": [*msgs, answer]}
    grpo = {"id": "a", "dataset": "d", "n": 2, "prompt": msgs, "answer": ["T cell", "B cell"], "candidates": TYPES}
    ev = {"id": "a", "dataset": "d", "group": "g", "n": 2, "messages": msgs}
    ev |= {"answer": ["T cell", "B cell"], "candidates": TYPES}
    for name, rec in [("sft", sft), ("grpo", grpo), ("eval", ev)]:
        (tmp_path / name).mkdir()
        write_jsonl([rec], tmp_path / name / "train.jsonl")
    return p


@pytest.mark.parametrize("kind", ["sft", "grpo", "eval"])
def test_corpus_from_records(tmp_path, kind):
    p = _records(tmp_path)
    texts = list(load_corpus(tmp_path / kind / "train.jsonl"))
    assert texts[0] == p.system
    assert "Cell 1: CD3E, MS4A1, LYZ, NKG7" in texts[1]
    assert texts[-1] == p.render_answer(["T cell", "B cell"]) and len(texts) == 3


def test_corpus_from_puzzles_parquet_and_dir(tmp_path):
    table = pa.table({
        "puzzle_id": ["p1"], "context": ["ctx"], "cell_genes": [GENES], "candidates": [TYPES],
        "answer": [["T cell", "B cell"]],
    })
    pq.write_table(table, tmp_path / "puzzles.parquet")
    texts = list(load_corpus(tmp_path / "puzzles.parquet"))
    assert len(texts) == 3 and "Context: ctx" in texts[1] and texts[2].endswith("<answer>T cell | B cell</answer>")
    _records(tmp_path)
    assert len(list(load_corpus(tmp_path))) == 3 + 3 * 3


def test_corpus_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(load_corpus(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(InputError, match="unknown corpus type"):
        list(load_corpus(tmp_path / "x.csv"))
    pq.write_table(pa.table({"a": [1]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match="missing columns"):
        list(load_corpus(tmp_path / "t.parquet"))


def test_cli_builds_with_corpus_and_flags(tmp_path):
    _records(tmp_path)
    out = tmp_path / "m"
    rc = main(["model", "tiny", "-o", str(out), "--corpus", str(tmp_path / "sft"), "--hidden", "32",
               "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab-size", "400",
               "--params", defaults_params(tmp_path)])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    assert tuple(cfg[k] for k in shape) == (32, 1, 2, 1)


def test_cli_rejects_bad_shape(tmp_path, capsys):
    rc = main(["model", "tiny", "-o", str(tmp_path / "m"), "--hidden", "30", "--heads", "4",
               "--params", defaults_params(tmp_path)])
    assert rc == 2 and not (tmp_path / "m").exists()
    assert "multiple of num_heads" in capsys.readouterr().err


def test_cli_help():
    assert main(["model", "tiny", "--help"]) == 0
