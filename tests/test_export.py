"""`export_run`: a run's final model as a Hugging Face folder that `AutoModelForCausalLM.from_pretrained`
loads and that computes the run's logits: a transformers model (full fine-tune), TinyGPT converted exactly
into GPT-2, and LoRA adapters (peft on a Llama, native on TinyGPT) as a base + adapter folder or merged.
Runs are built from Python and loaded back with a fresh model of the same shape, as `lifelong.load` takes
it. Bad requests (no checkpoint, a non-empty output folder, a model that is not a language model) are
refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lifelong.datasets.base import TextCorpus
from lifelong.errors import ConfigError, StateError
from lifelong.learner import Learner
from lifelong.lm.causal_lm import CausalLM
from lifelong.lm.export import EXPORT_INFO, byte_tokenizer, export_run, tinygpt_to_gpt2
from lifelong.methods import LoRA, Replay
from lifelong.models import MLP, TinyGPT
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.text import text_domains

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-2, "optimizer": "adamw"}
CORPUS = TextCorpus(
    "toy",
    {
        "animals": ["the cat sat on the mat and the dog ran in the park. " * 12],
        "numbers": ["one two three four five six seven eight nine ten. " * 12],
    },
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and on shared cores a second one costs far more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([t for texts in CORPUS.domains.values() for t in texts], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def llama(tokenizer, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return CausalLM(transformers.LlamaForCausalLM(config), tokenizer)


@pytest.fixture(scope="module")
def stream(tokenizer) -> Stream:
    return text_domains(CORPUS, block_size=16, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def byte_stream() -> Stream:
    return text_domains(CORPUS, block_size=16)


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def run(model, methods, stream, run_dir: Path) -> torch.nn.Module:
    Learner(model, methods, run_dir=run_dir, progress=False, report=False, **TRAIN).run(stream)
    return model


def probe(stream: Stream) -> torch.Tensor:
    return torch.cat([e.test.x[:2] for e in stream])


def read_info(out: Path) -> dict:
    return json.loads((out / EXPORT_INFO).read_text())


# --- a transformers model, fine-tuned in full ------------------------------------------------------------


def test_full_fine_tune_exports_a_plain_folder(tokenizer, stream, tmp_path: Path):
    trained = run(llama(tokenizer), [], stream, tmp_path / "run")
    out = export_run(tmp_path / "run", tmp_path / "out", model=llama(tokenizer, seed=1))
    assert out == tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", EXPORT_INFO} <= files
    assert not list(out.glob("*.bin")) and not list(tmp_path.glob(".out.*"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = probe(stream)
    torch.testing.assert_close(logits_of(loaded, x), logits_of(trained, x), rtol=0, atol=1e-6)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.encode("the cat sat") == tokenizer.encode("the cat sat")
    info = read_info(out)
    assert info["run_dir"] == str((tmp_path / "run").resolve())
    assert info["step"] == sum(-(-len(e.train) // TRAIN["batch_size"]) for e in stream)
    assert info["experiences_done"] == 2 and info["format"] == "transformers"
    assert info["versions"]["transformers"] == transformers.__version__ and info["versions"]["lifelong"]


# --- TinyGPT -> GPT-2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 4, 64, 0.0), (3, 2, 32, 0.1)])
def test_tinygpt_converts_exactly_into_gpt2(shape):
    n_layer, n_head, n_embd, dropout = shape
    torch.manual_seed(0)
    tiny = TinyGPT(256, 24, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
    with torch.no_grad():  # move every weight off its init (biases and norms start at 0 and 1)
        for p in tiny.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gpt2 = tinygpt_to_gpt2(tiny)
    assert isinstance(gpt2, transformers.GPT2LMHeadModel)
    assert gpt2.config.activation_function == "gelu" and gpt2.config.n_positions == 24
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    x = torch.randint(0, 256, (3, 24))
    torch.testing.assert_close(logits_of(gpt2, x), logits_of(tiny, x), rtol=0, atol=1e-5)


def test_tinygpt_run_exports_gpt2_with_a_byte_tokenizer(byte_stream, tmp_path: Path):
    torch.manual_seed(0)
    trained = run(TinyGPT(256, 16, n_layer=2, n_embd=32), [Replay(memory=20)], byte_stream, tmp_path / "run")
    torch.manual_seed(1)
    out = export_run(tmp_path / "run", tmp_path / "out", model=TinyGPT(256, 16, n_layer=2, n_embd=32))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    x = probe(byte_stream)
    torch.testing.assert_close(logits_of(loaded, x), logits_of(trained, x), rtol=0, atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("hé!").input_ids == list("hé!".encode())
    assert tok.decode(list("naïve".encode())) == "naïve"
    assert byte_tokenizer()("cat").input_ids == [99, 97, 116]


def test_tinygpt_native_lora_exports_merged_or_as_peft_adapters(byte_stream, tmp_path: Path):
    def tiny(seed: int) -> TinyGPT:
        torch.manual_seed(seed)
        return TinyGPT(256, 16, n_layer=2, n_embd=32)

    lora = {"rank": 2, "alpha": 4.0, "targets": ["qkv", "mlp.0"]}
    trained = run(tiny(0), [LoRA(**lora)], byte_stream, tmp_path / "run")
    x = probe(byte_stream)
    expected = logits_of(trained, x)
    merged = export_run(tmp_path / "run", tmp_path / "merged", merge_adapters=True, model=tiny(1))
    plain = transformers.AutoModelForCausalLM.from_pretrained(merged)
    torch.testing.assert_close(logits_of(plain, x), expected, rtol=0, atol=1e-5)
    separate = export_run(tmp_path / "run", tmp_path / "separate", model=tiny(2))
    config = json.loads((separate / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] and config["r"] == 2 and config["lora_alpha"] == 4.0
    with_adapters = transformers.AutoModelForCausalLM.from_pretrained(separate)
    torch.testing.assert_close(logits_of(with_adapters, x), expected, rtol=0, atol=1e-5)


# --- LoRA through peft on a transformers model ------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tokenizer, stream, tmp_path_factory):
    """Two experiences: the first one's adapter is merged into the base when the second begins."""
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    trained = run(llama(tokenizer), [LoRA(rank=2, alpha=4.0)], stream, run_dir)
    return run_dir, logits_of(trained, probe(stream))


def test_lora_exports_base_and_adapter_folders(tokenizer, stream, lora_run, tmp_path: Path):
    from peft import AutoPeftModelForCausalLM

    run_dir, expected = lora_run
    out = export_run(run_dir, tmp_path / "out", model=llama(tokenizer, seed=3))  # methods from the record
    assert {"adapter_config.json", "adapter_model.safetensors", "base", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").resolve())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 2
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base")
    assert not any("lora" in k for k in base.state_dict())
    x = probe(stream)
    assert not torch.allclose(logits_of(base, x), expected, atol=1e-4)  # the current adapter is not in it
    for loaded in (
        transformers.AutoModelForCausalLM.from_pretrained(out),
        AutoPeftModelForCausalLM.from_pretrained(out),
    ):
        torch.testing.assert_close(logits_of(loaded, x), expected, rtol=0, atol=1e-5)
    assert read_info(out)["format"] == "peft-adapter"


def test_lora_exports_merged(tokenizer, stream, lora_run, tmp_path: Path):
    run_dir, expected = lora_run
    out = export_run(
        run_dir,
        tmp_path / "out",
        merge_adapters=True,
        model=llama(tokenizer, seed=4),
        methods=[LoRA(rank=2, alpha=4.0)],
    )
    assert not (out / "adapter_config.json").exists() and not (out / "base").exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in loaded.state_dict())
    torch.testing.assert_close(logits_of(loaded, probe(stream)), expected, rtol=0, atol=1e-5)
    assert read_info(out)["adapters"] == "merged"


# --- refusals --------------------------------------------------------------------------------------------


def test_refuses_a_non_empty_output_folder(tokenizer, lora_run, tmp_path: Path):
    run_dir, _ = lora_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_run(run_dir, out, model=llama(tokenizer))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_run(run_dir, tmp_path / "file", model=llama(tokenizer))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_run(run_dir, empty, merge_adapters=True, model=llama(tokenizer)) / "config.json").is_file()


def test_a_python_run_needs_its_model_and_killed_exports_are_cleaned(tokenizer, lora_run, tmp_path: Path):
    run_dir, _ = lora_run
    with pytest.raises(StateError, match=r"from Python .*CausalLM.*export_run\(run_dir, out_dir, model="):
        export_run(run_dir, tmp_path / "out")
    dead = tmp_path / ".out.export-999999999"  # left by an export whose process was killed
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    export_run(run_dir, tmp_path / "out", merge_adapters=True, model=llama(tokenizer))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_a_run_without_a_checkpoint(tokenizer, stream, tmp_path: Path):
    class Killed(LoRA):
        def batch(self, ctx, batch):
            raise KeyboardInterrupt("killed in the first step")

    with pytest.raises(KeyboardInterrupt):
        run(llama(tokenizer), [Killed()], stream, tmp_path / "run")
    with pytest.raises(StateError, match="no checkpoint yet"):
        export_run(tmp_path / "run", tmp_path / "out", model=llama(tokenizer))
    with pytest.raises(StateError, match="not a lifelong run directory"):
        export_run(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_model_that_is_not_a_language_model(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.arange(40) % 2
    experience = Experience(0, Split(x, y), Split(x, y), classes=[0, 1])
    stream = Stream("toy", [experience], "classification", 2, (4,))
    run(MLP((4,), 2, hidden=[8]), [], stream, tmp_path / "run")
    with pytest.raises(ConfigError, match="MLP"):
        export_run(tmp_path / "run", tmp_path / "out", model=MLP((4,), 2, hidden=[8]))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_refuses_a_tokenizer_it_cannot_save(tokenizer, lora_run, tmp_path: Path):
    run_dir, _ = lora_run
    with pytest.raises(ConfigError, match="no save_pretrained"):
        export_run(run_dir, tmp_path / "out", model=llama(tokenizer), tokenizer="gpt2")
    assert list(tmp_path.iterdir()) == []
