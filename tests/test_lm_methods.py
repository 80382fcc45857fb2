"""Every method that claims language-modelling support works on a real Hugging Face causal LM (a tiny random
Llama through `CausalLM`), and the ones that cannot refuse early, naming an alternative.

Covered: replay; LwF's per-token distillation from a teacher that costs one copy of the weights; L2 and EWC
over the Llama's parameters with tied and untied output layers; EWC's token-sampled Fisher (sampled targets,
unbiased, seeded, bounded positions); LoRA through peft (default targets, bad targets, `merge: False` with
an unchanged base); HFT's choice on Llama parameter names; merging; a vocabulary padded beyond the
tokenizer's; and kill / resume equality for LoRA and EWC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lifelong.datasets.base import TextCorpus
from lifelong.errors import ConfigError, StateError
from lifelong.learner import Learner
from lifelong.methods import (
    AGEM,
    DER,
    EWC,
    GEM,
    HFT,
    L2,
    MAS,
    NCM,
    SI,
    WA,
    Analytic,
    Context,
    Cumulative,
    DERpp,
    ErAce,
    GDumb,
    ICaRL,
    Joint,
    LoRA,
    LwF,
    Merge,
    Method,
    OnlineEWC,
    Replay,
)
from lifelong.methods.ewc import fisher_diagonal, sampled_token_fisher, sampled_token_nll
from lifelong.methods.lora import linear_names
from lifelong.objectives import LanguageModeling
from lifelong.streams.experience import Split, Stream
from lifelong.streams.text import text_domains

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from lifelong.lm.causal_lm import CausalLM  # noqa: E402  (after the skip: it needs transformers to be useful)

TRAIN: dict[str, Any] = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "optimizer": "adamw"}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama(seed: int = 0, tie: bool = False, vocab: int = 256, tokenizer: Any = None) -> CausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return CausalLM(transformers.LlamaForCausalLM(config), tokenizer)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Models this small run fastest on one thread, and a second one spin-waiting on a busy core makes
    every matrix product ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text() -> Stream:
    corpus = TextCorpus(
        "toy",
        {
            "law": ["The court held that the contract was void and the appeal failed. " * 12],
            "cook": ["Whisk two eggs with sugar, fold in the flour and bake for an hour. " * 12],
            "sea": ["The ship sailed north past the cold islands before the storm. " * 12],
        },
    )
    return text_domains(corpus, block_size=32, max_blocks_per_domain=16)


def run(model: nn.Module, methods: list[Method], stream: Stream, **options: Any) -> Any:
    return Learner(model, methods, progress=False, **{**TRAIN, **options}).run(stream)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finite_matrix(results: Any, n: int) -> bool:
    values = torch.tensor(results.matrix, dtype=torch.float64)
    return values.shape == (n, n) and bool(torch.isfinite(values).all()) and bool((values > 1).all())


class Watch(Method):
    """Records the model's state dict when each experience starts and ends (after the methods before it)."""

    name = "watch"

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.ends: list[dict[str, torch.Tensor]] = []

    def start(self, ctx: Context) -> None:
        self.starts.append(weights(ctx.model))

    def end(self, ctx: Context) -> None:
        self.ends.append(weights(ctx.model))


# --- every method with language-modelling support runs; the others refuse -----------------------------------

WORKS: dict[str, Callable[[], list[Method]]] = {
    "replay": lambda: [Replay(memory=20)],
    "replay+lwf": lambda: [Replay(memory=20), LwF()],
    "l2": lambda: [L2(strength=1.0)],
    "ewc": lambda: [EWC(strength=10.0, samples=4, fisher_tokens=8)],
    "online_ewc": lambda: [OnlineEWC(strength=10.0, samples=4)],
    "mas": lambda: [MAS(samples=4)],
    "si": lambda: [SI()],
    "agem": lambda: [AGEM(memory=20, sample_size=8)],
    "gem": lambda: [GEM(memory_per_experience=4)],
    "lora": lambda: [LoRA(rank=4)],
    "hft": lambda: [HFT()],
    "merge": lambda: [Merge(mode="ema")],
    "cumulative": lambda: [Cumulative()],
    "joint": lambda: [Joint()],
}


@pytest.mark.parametrize("name", list(WORKS))
def test_method_trains_a_hugging_face_llama(name: str, text: Stream):
    model = llama(tie=name in ("l2", "ewc", "merge"))  # the tied head in the methods that copy weights
    before = weights(model)
    results = run(model, WORKS[name](), text)
    assert finite_matrix(results, len(text))
    assert results.matrix[0][0] < results.initial[0]  # the first domain was learnt
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


REFUSED = {
    "er_ace": (lambda: ErAce(memory=20), "'replay'"),
    "der": (lambda: DER(memory=20), "'replay'"),
    "derpp": (lambda: DERpp(memory=20), "'replay'"),
    "gdumb": (lambda: GDumb(memory=20), "'replay'"),
    "icarl": (lambda: ICaRL(memory=20), "'replay' or 'lwf'"),
    "wa": (lambda: WA(), "'replay' or 'lwf'"),
    "ncm": (lambda: NCM(), "'replay', 'lwf' or 'lora'"),
    "analytic": (lambda: Analytic(), "'replay', 'lwf' or 'lora'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_classification_only_methods_refuse_naming_an_alternative(name: str, text: Stream, tmp_path: Path):
    build, alternative = REFUSED[name]
    model = llama()
    before = weights(model)
    with pytest.raises(ConfigError, match=f"{name}.*classification.*{alternative}"):
        Learner(model, [build()], run_dir=tmp_path / name, progress=False, **TRAIN).run(text)
    assert not (tmp_path / name).exists()  # refused before anything was written
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_vocabulary_padded_beyond_the_tokenizer_is_fine(text: Stream):
    """The byte stream has 256 token ids; the model has 320 output rows (padded embeddings)."""
    assert text.num_classes == 256
    cases: list[list[Method]] = [
        [Replay(memory=20), LwF()],
        [EWC(strength=10.0, samples=4)],
        [LoRA(rank=4)],
        [HFT()],
    ]
    for methods in cases:
        model = llama(vocab=320)
        assert model.vocab_size == 320
        assert finite_matrix(run(model, methods, text), len(text))


# --- LwF ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_lwf_teacher_costs_one_copy_and_distils_every_token(tie: bool, text: Stream):
    tokenizer = object()  # stands for a Hugging Face tokenizer: shared with the teacher, never copied
    model = llama(tie=tie, tokenizer=tokenizer)
    lwf = LwF(strength=1.0, temperature=2.0)
    exp = text[1]
    ctx = Context(model, LanguageModeling(256), None, exp, 1, [text[0], exp])
    lwf.check(text, ctx.objective, [lwf])
    lwf.setup(model)
    lwf.start(ctx)
    assert lwf.teacher is not None
    x = exp.train.x[:4]
    teacher_logits = lwf.teacher_outputs(model, x)
    teacher: Any = lwf._teacher_model
    assert teacher is not None and teacher.tokenizer is tokenizer
    # one copy of the weights: the teacher model's tensors are the stored ones, each tensor once
    stored = {t.data_ptr() for t in lwf.teacher.values()}
    held = [*teacher.parameters(), *teacher.buffers()]
    assert {t.data_ptr() for t in held} <= stored and len(lwf.teacher) == len(held)
    live = {p.data_ptr() for p in model.parameters()}
    assert not stored & live  # a snapshot, not the live weights
    assert (teacher.model.lm_head.weight is teacher.model.model.embed_tokens.weight) == tie
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training

    # the student starts as the teacher: no distillation loss yet
    out = model(x)
    first = lwf.loss(ctx, Split(x, exp.train.y[:4]), out)
    assert first is not None and float(first.detach()) < 1e-6
    # after a change: T^2 * KL(teacher || student) per token, averaged over batch and positions
    with torch.no_grad():
        model.model.model.norm.weight.mul_(1.5)
    out = model(x)
    loss = lwf.loss(ctx, Split(x, exp.train.y[:4]), out)
    assert loss is not None
    t_log = torch.log_softmax(teacher_logits / 2.0, dim=-1)
    s_log = torch.log_softmax(out / 2.0, dim=-1)
    per_token = (t_log.exp() * (t_log - s_log)).sum(dim=-1)  # [B, T]
    assert per_token.shape == x.shape
    torch.testing.assert_close(loss, 4.0 * per_token.mean())
    assert float(loss.detach()) > 0
    loss.backward()  # the gradient reaches the student only
    assert model.model.model.norm.weight.grad is not None


# --- L2 and EWC: parameters by name, the tied head counted once --------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_l2_and_ewc_cover_each_llama_weight_once(tie: bool, text: Stream, tmp_path: Path):
    model = llama(tie=tie)
    l2, ewc = L2(strength=1.0), EWC(strength=10.0, samples=4, fisher_tokens=8)
    run(model, [l2, ewc], text, run_dir=tmp_path / "run")
    names = [n for n, _ in model.named_parameters()]  # each tensor once
    assert l2.anchor is not None and ewc.fisher_sum is not None
    assert list(l2.anchor) == names and sorted(ewc.fisher_sum) == sorted(names)
    assert ("model.lm_head.weight" in names) != tie
    assert all(n.startswith("model.model.") or n == "model.lm_head.weight" for n in names)
    assert all(bool(f.sum() > 0) for f in ewc.fisher_sum.values())
    # the penalty is the sum over those tensors, none twice
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    expected = sum(float((p.detach() - l2.anchor[n]).square().sum()) for n, p in model.named_parameters())
    exp = text[0]
    ctx = Context(model, LanguageModeling(256), None, exp, 2, list(text))
    value = l2.loss(ctx, Split(exp.train.x[:1], exp.train.y[:1]), torch.zeros(()))
    assert value is not None
    torch.testing.assert_close(float(value.detach()), expected, rtol=1e-4, atol=0.0)


# --- EWC's token-sampled Fisher -----------------------------------------------------------------------------


def drawn_targets(logits: torch.Tensor, tokens: int | None, seed: int) -> torch.Tensor:
    """The targets `sampled_token_nll` drew for logits [1, T, V] (-1 where no position was chosen), read off
    the gradient: d CE / d logits = (softmax - one_hot(target)) / sqrt(k) at the chosen positions."""
    out = logits.clone().requires_grad_(True)
    score = sampled_token_nll(tokens, torch.Generator().manual_seed(seed))(out)
    (g,) = torch.autograd.grad(score, out)
    chosen = g[0].abs().sum(dim=-1) > 0
    k = int(chosen.sum())
    one_hot = torch.softmax(logits[0], dim=-1) - g[0] * k**0.5
    return torch.where(chosen, one_hot.argmax(dim=-1), -torch.ones_like(chosen, dtype=torch.long))


def test_fisher_targets_are_drawn_from_the_models_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(1, 4000, 4).clone()  # one token impossible (logit -inf)
    targets = drawn_targets(logits, None, seed=0)
    assert bool((targets >= 0).all())
    counts = torch.bincount(targets, minlength=4).double() / len(targets)
    torch.testing.assert_close(counts, probs.double(), atol=0.03, rtol=0.0)
    assert int(counts[3]) == 0  # never the impossible token
    assert torch.equal(targets, drawn_targets(logits, None, seed=0))  # seeded
    assert not torch.equal(targets, drawn_targets(logits, None, seed=1))
    # `fisher_tokens`: that many random positions of the sequence, the others ignored
    few = drawn_targets(logits[:, :50], 7, seed=0)
    assert int((few >= 0).sum()) == 7


class Bigram(nn.Module):
    """A tiny next-token model small enough for the exact Fisher: logits of x_t depend on x_t alone."""

    def __init__(self, vocab: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 3)
        self.out = nn.Linear(3, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(x)))


def exact_token_fisher(model: nn.Module, data: Split) -> dict[str, torch.Tensor]:
    """The per-token Fisher, by enumeration: mean over positions of sum_y p(y) (d log p(y) / d theta)^2."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    positions = 0
    for x in data.x:
        logits = model(x.unsqueeze(0))[0]
        for t in range(len(x)):
            log_p = torch.log_softmax(logits[t], dim=-1)
            for y in range(log_p.shape[0]):
                grads = torch.autograd.grad(log_p[y], list(params.values()), retain_graph=True)
                for n, g in zip(params, grads, strict=True):
                    total[n] += log_p[y].exp().detach() * g.square()
            positions += 1
    return {n: v / positions for n, v in total.items()}


@pytest.mark.parametrize("tokens", [None, 1], ids=["every position", "one position"])
def test_token_sampled_fisher_is_unbiased(tokens: int | None):
    """One backward pass per sequence over the summed log-likelihood of sampled tokens: the cross terms
    between positions vanish in expectation, so the mean equals the exact per-token Fisher."""
    model = Bigram()
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 2]])
    data = Split(x, x)  # targets unused: the Fisher draws its own
    exact = exact_token_fisher(model, data)
    many = Split(x.repeat(600, 1), x.repeat(600, 1))
    generator = torch.Generator().manual_seed(0)
    estimate = sampled_token_fisher(model, LanguageModeling(6), many, tokens, generator)
    for n in exact:
        torch.testing.assert_close(estimate[n].sum(), exact[n].sum(), rtol=0.08, atol=0.0)
    # the predicted-label Fisher (what classification uses) is a different quantity here
    argmax = fisher_diagonal(model, LanguageModeling(6), data)
    assert abs(float(argmax["out.bias"].sum() / exact["out.bias"].sum()) - 1) > 0.2


def test_ewc_fisher_on_a_llama_is_seeded_and_covers_the_trainable_weights(text: Stream):
    model = llama()
    exp = text[0]
    ctx = Context(model, LanguageModeling(256), None, exp, 0, [exp])
    a = EWC(samples=3, fisher_tokens=8, seed=1).fisher(ctx)
    b = EWC(samples=3, fisher_tokens=8, seed=1).fisher(ctx)
    c = EWC(samples=3, fisher_tokens=8, seed=2).fisher(ctx)
    assert list(a) == [n for n, _ in model.named_parameters()]
    assert all(torch.equal(a[n], b[n]) for n in a) and not all(torch.equal(a[n], c[n]) for n in a)
    assert all(bool(v.sum() > 0) for v in a.values())
    assert all(p.grad is None for p in model.parameters())  # measuring leaves `.grad` alone
    assert EWC(fisher_tokens=8).params()["fisher_tokens"] == 8
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="fisher_tokens"):
            EWC(fisher_tokens=bad)  # type: ignore[arg-type]


# --- LoRA through peft --------------------------------------------------------------------------------------


def peft_layers(model: nn.Module) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def test_lora_default_targets_are_every_projection_not_the_head(text: Stream):
    model = llama()
    lora = LoRA(rank=4, train_head=False)
    lora.setup(model)
    assert {n.rpartition(".")[2] for n in peft_layers(model)} == set(PROJECTIONS)
    assert len(peft_layers(model)) == 2 * len(PROJECTIONS)  # two layers
    assert not model.model.lm_head.weight.requires_grad
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_lora_bad_targets_are_refused_with_the_layer_names(text: Stream):
    model = llama()
    before = list(model.state_dict())
    listing = ", ".join([*PROJECTIONS, "lm_head"])
    assert linear_names(model) == [*PROJECTIONS, "lm_head"]
    with pytest.raises(ConfigError, match=f"'qproj' names no module of LlamaForCausalLM.*: {listing}$"):
        Learner(model, [LoRA(targets=["q_proj", "qproj"])], progress=False, **TRAIN).run(text)
    with pytest.raises(ConfigError, match="'mlp' matches a LlamaMLP, not a linear layer"):
        LoRA(targets=["mlp"]).setup(model)
    with pytest.raises(ConfigError, match="output layer while train_head is true"):
        LoRA(targets=["lm_head"]).setup(model)
    assert list(model.state_dict()) == before and not peft_layers(model)  # nothing was injected
    LoRA(targets=["lm_head"], train_head=False).setup(model)  # adapting the head is allowed without it
    assert peft_layers(model) == ["model.lm_head"]


@pytest.mark.parametrize("train_head", [False, True], ids=["adapters only", "with head"])
def test_lora_without_merging_trains_one_adapter_on_an_unchanged_base(train_head: bool, text: Stream):
    model = llama()
    original = weights(model)
    lora, watch = LoRA(rank=4, merge=False, train_head=train_head), Watch()
    results = run(model, [lora, watch], text, lr=1e-2)
    assert lora.frozen_base and not LoRA().frozen_base
    assert lora.params()["merge"] is False
    changing = set(lora.changing_names(model))
    final = weights(model)
    adapters = {k for k in final if ".lora_A." in k or ".lora_B." in k}
    head = {"model.lm_head.weight"} if train_head else set()
    assert changing - {k for k, _ in model.named_buffers()} == adapters | head
    for key, value in final.items():  # the base: every original tensor outside `changing_names`
        if key not in changing:
            base = key.replace(".base_layer", "")
            assert torch.equal(value, original[base]), key
    # one adapter through the stream: each experience starts where the previous one ended
    for i in range(1, len(text)):
        assert all(torch.equal(watch.starts[i][k], watch.ends[i - 1][k]) for k in adapters)
    assert any(not torch.equal(watch.ends[0][k], watch.ends[-1][k]) for k in adapters if ".lora_B." in k)
    assert results.matrix[-1][-1] < results.initial[-1]


def test_lora_merging_folds_each_adapter_into_the_base(text: Stream):
    model = llama()
    lora, watch = LoRA(rank=4, train_head=False), Watch()
    run(model, [lora, watch], text, lr=1e-2)
    q = "model.model.layers.0.self_attn.q_proj.base_layer.weight"
    b = "model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    assert torch.equal(watch.starts[0][q], watch.ends[0][q])  # frozen while an experience trains
    assert not torch.equal(watch.ends[0][q], watch.starts[1][q])  # merged when the next one starts
    assert float(watch.ends[0][b].abs().max()) > 0 and float(watch.starts[1][b].abs().max()) == 0
    assert set(lora.changing_names(model)) == set(model.state_dict())


# --- HFT and merging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_hft_freezes_half_of_each_llama_layer_and_never_the_head(tie: bool, text: Stream):
    model = llama(tie=tie)
    hft, watch = HFT(), Watch()
    run(model, [hft, watch], text, lr=1e-2)
    params = dict(model.named_parameters())
    for i in range(len(text)):
        frozen = hft.frozen_names(model, i)
        assert set(frozen) <= set(params) and "model.lm_head.weight" not in frozen
        if tie:
            assert "model.model.embed_tokens.weight" not in frozen  # it is the head
        for layer in range(2):  # 9 units a layer: 7 projections and 2 norms; 4 or 5 frozen
            prefix = f"model.model.layers.{layer}."
            assert len([n for n in frozen if n.startswith(prefix)]) in (4, 5)
        for name in params:  # frozen: unchanged during the experience; the rest trains
            same = torch.equal(watch.starts[i][name], watch.ends[i][name])
            assert same == (name in frozen), (i, name)
    assert hft.frozen_names(model, 0) != hft.frozen_names(model, 1)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_merge_modes_on_a_llama(tie: bool, text: Stream):
    for mode in ("average", "task_arithmetic"):
        model = llama(tie=tie)
        initial = weights(model)
        watch = Watch()  # before merge: its `end` sees the weights each experience trained to
        run(model, [watch, Merge(mode=mode, scale=0.5)], text, lr=1e-2)
        final = model.state_dict()
        for name, _ in model.named_parameters():
            ends = torch.stack([e[name] for e in watch.ends])
            if mode == "average":
                torch.testing.assert_close(final[name], ends.mean(dim=0))
            else:
                tau = (ends - initial[name]).sum(dim=0)
                torch.testing.assert_close(final[name], initial[name] + 0.5 * tau)
        if tie:
            assert model.model.lm_head.weight is model.model.model.embed_tokens.weight


# --- killed and resumed equals never killed ---------------------------------------------------------------


def killed_at(cls: type[Method], step: int) -> type[Method]:
    class Killed(cls):  # type: ignore[misc, valid-type]
        def batch(self, ctx: Context, batch: Split) -> Split:
            if ctx.step == step:
                raise KeyboardInterrupt("killed")
            return super().batch(ctx, batch)

    return Killed


RESUMED: dict[str, tuple[type[Method], dict[str, Any]]] = {
    "lora": (LoRA, {"rank": 4}),
    "lora-no-merge": (LoRA, {"rank": 4, "merge": False, "train_head": False}),
    "ewc": (EWC, {"strength": 100.0, "samples": 4, "fisher_tokens": 8}),
    "lwf": (LwF, {}),
}


@pytest.mark.parametrize("name", list(RESUMED))
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_killed_and_resumed_equals_never_killed(name: str, tie: bool, text: Stream, tmp_path: Path):
    cls, options = RESUMED[name]
    # 2 steps per experience: a checkpoint after step 3, half-way through the second experience; the kill
    # comes at the next step, so the run resumes inside an experience (its `start` is not repeated)
    train = {**TRAIN, "lr": 1e-2, "checkpoint_every": 3}
    unbroken = llama(tie=tie)
    reference = run(unbroken, [cls(**options)], text, **train)
    with pytest.raises(KeyboardInterrupt):
        run(llama(tie=tie), [killed_at(cls, 3)(**options)], text, run_dir=tmp_path / "r", **train)
    if cls is LoRA and not options.get("merge", True):
        # a frozen base is checkpointed by its SHA-256 only: the run goes on from the same base model
        with pytest.raises(StateError, match="base weights of the model given differ"):
            Learner(
                llama(seed=7, tie=tie), [cls(**options)], run_dir=tmp_path / "r", progress=False, **train
            ).run(text, resume=True)
        model = llama(seed=0, tie=tie)
    else:
        model = llama(seed=7, tie=tie)  # other weights: all of them must come from the checkpoint
    resumed = Learner(model, [cls(**options)], run_dir=tmp_path / "r", progress=False, **train).run(
        text, resume=True
    )
    assert resumed.matrix == reference.matrix
    a, b = unbroken.state_dict(), model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (model.model.lm_head.weight is model.model.model.embed_tokens.weight) == tie

