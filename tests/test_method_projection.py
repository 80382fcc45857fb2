"""A-GEM and GEM: gradient projection against an episodic memory.

Shows that the projected gradients satisfy the papers' constraints on every training step (A-GEM: g̃·g_ref
≥ 0, and g̃ = g bit for bit when there is no conflict; GEM: G g̃ ≥ 0 for every past experience), that GEM's
quadratic-programme solver matches scipy's NNLS and a brute-force enumeration, that both methods forget
less than plain fine-tuning on a permuted stream, that they run on a language-modelling stream, and that a
killed run resumes to bit-identical weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch.nn.utils import parameters_to_vector as flat

from lifelong import datasets
from lifelong.datasets.base import TextCorpus
from lifelong.errors import ConfigError
from lifelong.learner import Learner
from lifelong.methods.agem import AGEM
from lifelong.methods.agem import project_ as agem_project_
from lifelong.methods.base import Context, Method
from lifelong.methods.gem import GEM, nonnegative_qp
from lifelong.methods.gem import project_ as gem_project_
from lifelong.models import MLP, TinyGPT
from lifelong.streams import scenarios
from lifelong.streams.experience import Stream
from lifelong.streams.text import text_domains

TRAIN = {"epochs": 3, "batch_size": 32, "lr": 0.1, "optimizer": "sgd"}


@pytest.fixture(scope="module")
def permuted() -> Stream:
    """Four permutations of the 8x8 digits: plain fine-tuning forgets the first ones badly."""
    return scenarios.permuted(datasets.load("digits"), 4)


@pytest.fixture(scope="module")
def text() -> Stream:
    corpus = TextCorpus("toy", {"a": ["the cat sat on the mat. " * 40], "b": ["0123 4567 89 " * 60]})
    return text_domains(corpus, block_size=16)


def new_model(stream: Stream, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(stream.input_shape, stream.num_classes, hidden=[100, 100])


class Grads(Method):
    """Records every parameter gradient at `after_backward` (before or after another method's)."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []

    def after_backward(self, ctx: Context) -> None:
        self.steps.append([p.grad.clone() for p in ctx.model.parameters() if p.grad is not None])


class Before(Grads):
    name = "grads_before"


class After(Grads):
    name = "grads_after"


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b, strict=True)))


# --- A-GEM --------------------------------------------------------------------------------------------------


class RecordingAGEM(AGEM):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refs: list[list[torch.Tensor]] = []

    def reference_gradient(self, ctx, params):
        ref = super().reference_gradient(ctx, params)
        self.refs.append([r.clone() for r in ref])
        return ref


def test_agem_projected_gradient_never_conflicts_with_the_memory_gradient(permuted):
    stream = scenarios.permuted(datasets.load("digits"), 3)
    before, agem, after = Before(), RecordingAGEM(200, 64), After()
    Learner(new_model(stream), [before, agem, after], progress=False, **{**TRAIN, "epochs": 1}).run(stream)
    first = len(before.steps) - len(agem.refs)  # the first experience: empty memory, no reference gradient
    assert first == len(before.steps) // 3 and len(agem.refs) > 0
    conflicts = 0
    for g, g_tilde, ref in zip(before.steps[first:], after.steps[first:], agem.refs, strict=True):
        assert dot(g_tilde, ref) >= -1e-6
        if dot(g, ref) >= 0:
            assert all(torch.equal(a, b) for a, b in zip(g, g_tilde, strict=True))  # untouched, bit for bit
        else:
            conflicts += 1
            assert dot(g_tilde, ref) == pytest.approx(0.0, abs=1e-5 * dot(ref, ref) ** 0.5 * dot(g, g) ** 0.5)
    assert 0 < conflicts < len(agem.refs)  # both branches ran
    for g, g_tilde in zip(before.steps[:first], after.steps[:first], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(g, g_tilde, strict=True))


def test_agem_projection_is_the_closed_form():
    torch.manual_seed(0)
    g, r = [torch.randn(7, 3), torch.randn(5)], [torch.randn(7, 3), torch.randn(5)]
    g[0] -= 2 * r[0]
    g[1] -= 2 * r[1]  # conflicting
    gv, rv = torch.cat([x.flatten() for x in g]).double(), torch.cat([x.flatten() for x in r]).double()
    expected = gv - (gv @ rv) / (rv @ rv) * rv
    agem_project_(g, r)
    torch.testing.assert_close(torch.cat([x.flatten() for x in g]).double(), expected, rtol=1e-6, atol=1e-6)


def test_agem_memory_holds_past_experiences_only(permuted):
    stream = scenarios.permuted(datasets.load("digits"), 2)
    agem = AGEM(memory=300, sample_size=32)
    sizes = []

    class Size(Method):
        name = "size"

        def start(self, ctx):
            sizes.append(len(agem.memory))

    Learner(new_model(stream), [Size(), agem], progress=False, **{**TRAIN, "epochs": 1}).run(stream)
    assert sizes == [0, 300] and len(agem.memory) == 300
    # after two experiences of equal size the reservoir is an unbiased mix of both
    first = stream[0].train.x.flatten(1)
    stored = agem.memory.contents().x.flatten(1)
    from_first = int((torch.cdist(stored, first).min(dim=1).values == 0).sum())
    assert 100 < from_first < 200


@pytest.fixture(scope="module")
def naive_results(permuted):
    return Learner(new_model(permuted), [], progress=False, **TRAIN).run(permuted)


def test_agem_forgets_less_than_naive(permuted, naive_results):
    agem = Learner(new_model(permuted), [AGEM(500, 256)], progress=False, **TRAIN).run(permuted)
    naive = naive_results.summary
    # measured: naive acc 0.540, forgetting 0.437; A-GEM acc 0.611, forgetting 0.345
    assert agem.summary["forgetting"] < naive["forgetting"] - 0.05
    assert agem.summary["acc"] > naive["acc"] + 0.03
    assert agem.matrix[-1][0] > naive_results.matrix[-1][0] + 0.05


def test_agem_works_for_language_modelling(text):
    torch.manual_seed(0)
    model = TinyGPT(text.num_classes, 16, n_layer=1, n_embd=16)
    agem = RecordingAGEM(memory=40, sample_size=8)
    results = Learner(model, [agem], progress=False, epochs=1, batch_size=8, lr=3e-3, optimizer="adam").run(
        text
    )
    assert results.metric == "perplexity" and np.isfinite(results.matrix).all()
    assert len(agem.refs) > 0 and len(agem.memory) == 40


# --- GEM ----------------------------------------------------------------------------------------------------


def brute_force_qp(P: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """argmin_{u ≥ 0} ½uᵀPu + cᵀu for positive-definite P: the active set whose stationary point is feasible
    and satisfies KKT (unique for positive-definite P)."""
    k = c.numel()
    for size in range(k + 1):
        for subset in itertools.combinations(range(k), size):
            u = torch.zeros(k, dtype=torch.float64)
            idx = list(subset)
            if idx:
                u[idx] = torch.linalg.solve(P[idx][:, idx], -c[idx])
            grad = P @ u + c
            if (u >= -1e-12).all() and (grad >= -1e-9).all():
                return u
    raise AssertionError("no KKT point")


def test_qp_solver_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        k = int(torch.randint(1, 7, (), generator=g))
        A = torch.randn(k, k + 3, dtype=torch.float64, generator=g)
        P, c = A @ A.T, torch.randn(k, dtype=torch.float64, generator=g)
        torch.testing.assert_close(nonnegative_qp(P, c), brute_force_qp(P, c), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("degenerate", [False, True])
def test_qp_solver_matches_scipy_nnls(degenerate):
    """GEM's dual in NNLS form, min_{u ≥ 0} ‖Gᵀu + g_m‖, against scipy; rank-deficient G included (then u is
    not unique, but the projected gradient Gᵀu + g_m is)."""
    g = torch.Generator().manual_seed(2)
    for trial in range(100):
        k = int(torch.randint(1, 21, (), generator=g))
        D = max(1, k - 3) if degenerate and trial % 2 else int(torch.randint(k, 80, (), generator=g))
        G = torch.randn(k, D, dtype=torch.float64, generator=g)
        if degenerate and k > 1:
            G[-1] = G[0]  # a repeated constraint
        g_m = torch.randn(D, dtype=torch.float64, generator=g)
        u = nonnegative_qp(G @ G.T, G @ g_m)
        u_scipy = torch.from_numpy(nnls(G.T.numpy(), -g_m.numpy(), maxiter=10_000)[0])
        assert (u >= 0).all()
        torch.testing.assert_close(G.T @ u + g_m, G.T @ u_scipy + g_m, rtol=1e-8, atol=1e-8)
        assert (G @ (G.T @ u + g_m) >= -1e-9).all()  # the constraints of the projected gradient


def test_gem_projection_satisfies_every_constraint_and_is_the_closest_such_gradient():
    torch.manual_seed(3)
    k = 6
    refs = [torch.randn(k, 20, 30), torch.randn(k, 30)]
    grads = [-refs[0][:3].sum(0) + 0.1 * torch.randn(20, 30), -refs[1][:3].sum(0)]  # conflicts with some
    G = torch.cat([r.flatten(1) for r in refs], dim=1).double()
    g = torch.cat([x.flatten() for x in grads]).double()
    assert (G @ g < 0).any()
    for margin in (0.0, 0.5):
        out = [x.clone() for x in grads]
        v = gem_project_(out, refs, margin)
        g_tilde = torch.cat([x.flatten() for x in out]).double()
        assert v is not None and (v >= margin - 1e-12).all()
        # the projected gradient is written back in float32: the constraints hold up to its rounding,
        # relative to |G_k| |g~| (the kernels' summation order differs between CPUs)
        tolerance = 1e-5 * G.norm(dim=1) * g_tilde.norm()
        assert (G @ g_tilde >= -tolerance).all(), (G @ g_tilde, tolerance)
        if margin == 0.0:  # the exact projection: scipy's NNLS of the dual gives the same vector
            u = torch.from_numpy(nnls(G.T.numpy(), -g.numpy())[0])
            torch.testing.assert_close(g_tilde, G.T @ u + g, rtol=1e-5, atol=1e-5)
    # no conflict (g equal to the only reference gradient): the gradient is left exactly as it is
    same = [r[0].clone() for r in refs]
    out = [x.clone() for x in same]
    assert gem_project_(out, [r[:1] for r in refs], 0.5) is None
    assert all(torch.equal(a, b) for a, b in zip(out, same, strict=True))


class RecordingGEM(GEM):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refs: list[list[torch.Tensor]] = []

    def reference_gradients(self, ctx, params):
        refs = super().reference_gradients(ctx, params)
        self.refs.append([r.clone() for r in refs])
        return refs


def test_gem_projected_gradients_satisfy_all_constraints_during_training():
    stream = scenarios.task_incremental(datasets.load("digits"), 4)  # memories carry task labels
    before, gem, after = Before(), RecordingGEM(64, margin=0.5), After()
    Learner(new_model(stream), [before, gem, after], progress=False, **{**TRAIN, "epochs": 1}).run(stream)
    first = len(before.steps) - len(gem.refs)
    projected = 0
    for g, g_tilde, refs in zip(before.steps[first:], after.steps[first:], gem.refs, strict=True):
        G = torch.cat([r.flatten(1) for r in refs], dim=1).double()
        gv = torch.cat([x.flatten() for x in g]).double()
        gt = torch.cat([x.flatten() for x in g_tilde]).double()
        scale = G.norm(dim=1) * gt.norm()
        assert (G @ gt >= -1e-5 * scale).all()
        if (G @ gv >= 0).all():
            assert torch.equal(gv, gt)
        else:
            projected += 1
    assert projected > 0
    assert {r[0].shape[0] for r in gem.refs} == {1, 2, 3}  # one reference gradient per past experience


def test_gem_forgets_less_than_naive(permuted, naive_results):
    gem = Learner(new_model(permuted), [GEM(256, margin=0.5)], progress=False, **TRAIN).run(permuted)
    # measured: naive acc 0.540, forgetting 0.437; GEM acc 0.805, forgetting 0.084
    assert gem.summary["forgetting"] < naive_results.summary["forgetting"] - 0.2
    assert gem.summary["acc"] > naive_results.summary["acc"] + 0.15


def test_gem_works_for_language_modelling(text):
    torch.manual_seed(0)
    model = TinyGPT(text.num_classes, 16, n_layer=1, n_embd=16)
    gem = RecordingGEM(memory_per_experience=8)
    results = Learner(model, [gem], progress=False, epochs=1, batch_size=8, lr=3e-3, optimizer="adam").run(
        text
    )
    assert np.isfinite(results.matrix).all() and len(gem.refs) > 0
    assert [len(m) for m in gem.memories] == [8, 8]


# --- options, composition, resume -------------------------------------------------------------------------


def test_options_and_refusals(permuted, tmp_path):
    assert AGEM().params() == {"memory": 500, "sample_size": 256}
    assert GEM().params() == {"memory_per_experience": 256, "margin": 0.5}
    with pytest.raises(ConfigError, match="sample_size"):
        AGEM(sample_size=0)
    with pytest.raises(ConfigError, match="margin"):
        GEM(margin=-1.0)
    with pytest.raises(ConfigError, match="'agem' and 'gem'|'gem' and 'agem'"):
        Learner(new_model(permuted), [AGEM(), GEM()], run_dir=tmp_path / "x", progress=False).run(permuted)
    assert not (tmp_path / "x").exists()
    for method in (AGEM(), GEM()):
        assert not method.rehearsal and not method.selects_trainable and not method.alone


def crashing(cls: type[Method], index: int, after: int) -> type[Method]:
    """`cls`, but the run dies `after` steps into experience `index`."""

    class Crashing(cls):  # type: ignore[misc, valid-type]
        def start(self, ctx):
            super().start(ctx)
            self.began = ctx.step

        def batch(self, ctx, batch):
            if ctx.index == index and ctx.step == self.began + after:
                raise KeyboardInterrupt("killed")
            return batch

    return Crashing


@pytest.mark.parametrize(
    ("cls", "options"), [(AGEM, {"memory": 100, "sample_size": 32}), (GEM, {"memory_per_experience": 32})]
)
def test_killed_mid_experience_resumes_bit_identical(cls, options, tmp_path):
    stream = scenarios.task_incremental(datasets.load("digits"), 3)
    train = {**TRAIN, "epochs": 1, "checkpoint_every": 5}
    model = new_model(stream)
    Learner(model, [cls(**options)], progress=False, **train).run(stream)
    unbroken = flat(model.parameters()).detach()

    run_dir = tmp_path / cls.name
    with pytest.raises(KeyboardInterrupt):
        Learner(
            new_model(stream), [crashing(cls, 2, 7)(**options)], run_dir=run_dir, progress=False, **train
        ).run(stream)
    model = new_model(stream, seed=123)  # fresh objects: everything comes from the checkpoint
    Learner(model, [cls(**options)], run_dir=run_dir, progress=False, **train).run(stream, resume=True)
    assert torch.equal(flat(model.parameters()).detach(), unbroken)


def test_state_round_trip_through_safetensors(permuted):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from lifelong.state import split_state

    stream = scenarios.task_incremental(datasets.load("digits"), 2)
    for method, fresh in ((AGEM(50, 8), AGEM(50, 8)), (GEM(16), GEM(16))):
        Learner(new_model(stream), [method], progress=False, **{**TRAIN, "epochs": 1}).run(stream)
        tensors, meta = split_state(method.state_dict())
        fresh.load_state_dict({**meta, **st_load(st_save(tensors))})
        again, _ = split_state(fresh.state_dict())
        assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_gem_with_five_past_experiences_on_the_reference_mlp():
    """The set-up of the timing in docs/methods/gem.md: the 2x400 MLP on 28x28 inputs, five past
    experiences of 256 stored samples each, a batch of 32."""
    from lifelong.objectives import Classification
    from lifelong.streams.experience import Experience, Split

    torch.manual_seed(0)
    model, objective = MLP((1, 28, 28), 10), Classification(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,)))

    exps = [Experience(i, split(300), split(10)) for i in range(6)]
    gem = GEM(256)
    for i in range(5):
        gem.end(Context(model, objective, opt, exps[i], i, exps[: i + 1]))
    assert [len(m) for m in gem.memories] == [256] * 5
    recording = RecordingGEM(256)
    recording.load_state_dict(gem.state_dict())
    ctx = Context(model, objective, opt, exps[5], 5, exps)
    b = split(32)
    objective.loss(objective.forward(model, b.x, None), b.y).backward()
    recording.after_backward(ctx)
    assert [r.shape[0] for r in recording.refs[0]] == [5] * len(list(model.parameters()))
