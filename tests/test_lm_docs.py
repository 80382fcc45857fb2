"""The language-model guide (docs/lm.md) says true things: every message its troubleshooting table quotes is
the real one (each is triggered here, and every quote has a trigger), and its Python example runs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lifelong.config import parse_config
from lifelong.datasets.base import TextCorpus
from lifelong.errors import LifelongError
from lifelong.streams.text import ByteTokenizer

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "lm.md"


def quotes() -> list[str]:
    text = GUIDE.read_text().split("## 10. Troubleshooting", 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `(.*?)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]


def pattern(quote: str) -> str:
    """The quote as a regular expression: N and M are numbers, 'x' and x a name, ... anything, 0x.. a byte."""
    parts = re.split(r"(\.\.\.|0x\.\.|'x'|\b[NMx]\b)", quote)
    wildcards = {"...": ".*", "0x..": "0x[0-9a-f]+", "'x'": "'[^']+'", "N": r"\d+", "M": r"\d+", "x": r"\S+"}
    return "".join(wildcards.get(part, re.escape(part)) for part in parts)


def tiny_llama(vocab: int = 64, positions: int = 32) -> object:
    from lifelong.lm.causal_lm import CausalLM

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
    )
    torch.manual_seed(0)
    return CausalLM(transformers.LlamaForCausalLM(config))


def bf16(tmp: Path) -> None:
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has native bfloat16")
    parse_config(
        {
            "data": {"name": "fortunes"},
            "scenario": {"type": "domains"},
            "model": {"name": "gpt"},
            "train": {"precision": "bf16"},
        }
    )


def vocab(tmp: Path) -> None:
    from lifelong.lm.hf import check_vocab

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=_bpe_backend(300))
    check_vocab(tokenizer, tiny_llama(vocab=64).model)


def _bpe_backend(size: int) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 50], trainer)
    return tok


def block_size(tmp: Path) -> None:
    from lifelong.lm.hf import check_block_size

    check_block_size(256, tiny_llama(positions=128))


def short_domain(tmp: Path) -> None:
    from lifelong.lm.tokens import token_domains

    corpus = TextCorpus("t", {"long": ["word " * 400], "tiny": ["a few words"]})
    token_domains(corpus, ByteTokenizer(), block_size=64, cache_dir=tmp)


def budget(tmp: Path) -> None:
    from lifelong.lm.tokens import token_domains

    token_domains(TextCorpus("t", {"a": ["word " * 400]}), ByteTokenizer(), block_size=64, max_tokens=10)


def text_column(tmp: Path) -> None:
    from lifelong.streams.text_files import read_text_domains

    (tmp / "news.jsonl").write_text(json.dumps({"body": "hello there"}) + "\n")
    read_text_domains(tmp / "news.jsonl")


def encoding(tmp: Path) -> None:
    from lifelong.streams.text_files import read_text_domains

    (tmp / "old.txt").write_bytes("caf\u00e9 au lait".encode("cp1252"))
    read_text_domains(tmp / "old.txt")


def memory(tmp: Path) -> None:
    from lifelong.lm.memory import check_training_memory

    huge = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80
    )
    check_training_memory(huge, batch_size=8, block_size=2048)


def not_causal(tmp: Path) -> None:
    from lifelong.lm.hf import load_causal_lm

    transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp / "bert")
    load_causal_lm(tmp / "bert")


def lora_target(tmp: Path) -> None:
    from lifelong.methods import LoRA

    LoRA(targets=["attn_qkv"]).setup(tiny_llama())  # type: ignore[arg-type]


TRIGGERS: dict[str, Callable[[Path], None]] = {
    "precision 'bf16' needs": bf16,
    "the tokenizer has": vocab,
    "block_size N is longer": block_size,
    "domain 'x' (N tokens)": short_domain,
    "max_tokens=N is below": budget,
    "...has no column": text_column,
    "...: byte N": encoding,
    "training x with batch_size": memory,
    "... not a causal": not_causal,
    "lora target 'x'": lora_target,
}


def test_every_quote_has_a_trigger():
    found = quotes()
    assert len(found) == len(TRIGGERS)
    for quote in found:
        assert any(quote.startswith(key) for key in TRIGGERS), quote


@pytest.mark.parametrize("key", list(TRIGGERS))
def test_quoted_message_is_the_real_one(key, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (quote,) = [q for q in quotes() if q.startswith(key)]
    with pytest.raises(LifelongError) as caught:
        TRIGGERS[key](tmp_path)
    assert re.search(pattern(quote), str(caught.value), flags=re.S), (quote, str(caught.value))


def test_python_example_runs_as_written(tmp_path, monkeypatch):
    from lifelong import datasets

    for name in ("kjv", "austen"):
        if datasets.info(name).locate() is None:
            pytest.skip(f"data set {name} is not installed (make data)")
    (block,) = re.findall(r"## 9\. From Python.*?```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(block, "docs/lm.md", "exec"), namespace)
    results = namespace["results"]
    assert len(results.matrix) == 2 and all(v > 1.0 for row in results.matrix for v in row)
    assert results.tokens_seen and all(t > 0 for t in results.tokens_seen)
