"""The loop's deferred training-accuracy count (engine/train_accuracy.py) and the heads'
`unimodal_affine` form it evaluates many steps with."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from bbench.engine.train_accuracy import CHUNK, TrainingAccuracy, unimodal_over_steps
from bbench.methods.amco import AMCoHead
from bbench.methods.base import ForwardOut
from bbench.models.fusion import FUSIONS, FusionHead, build_fusion

AFFINE = ["concat", "sum", "shared"]


def head_named(name: str, dims: tuple[int, ...], classes: int) -> nn.Module:
    if name == "amco":
        return AMCoHead(build_fusion("concat", dims, classes))
    return build_fusion(name, dims, classes)


def perturbed_states(head: nn.Module, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`steps` different states of the head, as training would leave it step after step."""
    generator = torch.Generator().manual_seed(seed)
    base = head.state_dict()
    return [{k: v + torch.randn(v.shape, generator=generator) * 0.5 for k, v in base.items()}
            for _ in range(steps)]


@pytest.mark.parametrize("name", [*FUSIONS.names(), "amco"])
@settings(max_examples=15, deadline=None)
@given(steps=st.integers(1, 5), batch=st.integers(1, 6), classes=st.integers(2, 5),
       dims=st.lists(st.integers(1, 6), min_size=2, max_size=3), seed=st.integers(0, 999))
def test_every_step_is_evaluated_with_its_own_copy_of_the_head(name, steps, batch, classes,
                                                                dims, seed):
    """The batched evaluation (affine product or vmap) equals the head's own `unimodal` with
    each step's state loaded, modality by modality."""
    torch.manual_seed(seed)
    head = head_named(name, tuple(dims), classes)
    states = perturbed_states(head, steps, seed)
    features = [[torch.randn(batch, d) for d in dims] for _ in range(steps)]
    names = list(states[0])
    got = unimodal_over_steps(head, names, [torch.stack([s[k] for s in states]) for k in names],
                              [torch.stack(f) for f in zip(*features)])
    assert got.shape == (steps, len(dims), batch, classes)
    for s, state in enumerate(states):
        head.load_state_dict(state)
        with torch.no_grad():
            want = torch.stack([head.unimodal(features[s], m) for m in range(len(dims))])
        torch.testing.assert_close(got[s], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [*AFFINE, "amco"])
def test_affine_heads_give_their_unimodal_logits_as_a_weight_and_bias(name):
    head = head_named(name, (3, 5), 4)
    features = [torch.randn(7, 3), torch.randn(7, 5)]
    state = head.state_dict()
    for m in range(2):
        weight, bias = head.unimodal_affine(state, m)
        torch.testing.assert_close(features[m] @ weight.t() + bias,
                                   head.unimodal(features, m).detach())


@pytest.mark.parametrize("name", ["cosine", "film", "gated"])
def test_heads_whose_unimodal_logits_are_not_affine_say_so(name):
    head = build_fusion(name, (3, 5), 4)
    assert head.unimodal_affine(head.state_dict(), 0) is None


class BranchingHead(FusionHead):
    """A head vmap cannot evaluate: its unimodal branches on a tensor's value."""

    def __init__(self, dims, classes):
        super().__init__(dims, classes)
        self.fcs = nn.ModuleList(nn.Linear(d, classes) for d in dims)

    def forward(self, features):
        return sum(self.unimodal(features, i) for i in range(len(features)))

    def unimodal(self, features, index):
        z = self.fcs[index](features[index])
        return z if bool(z.sum() > 0) else -z


def test_a_head_vmap_cannot_run_is_evaluated_step_by_step():
    torch.manual_seed(0)
    head = BranchingHead((3, 2), 4)
    states = perturbed_states(head, 3, 1)
    features = [[torch.randn(5, 3), torch.randn(5, 2)] for _ in range(3)]
    names = list(states[0])
    got = unimodal_over_steps(head, names, [torch.stack([s[k] for s in states]) for k in names],
                              [torch.stack(f) for f in zip(*features)])
    for s, state in enumerate(states):
        head.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(got[s, 1], head.unimodal(features[s], 1))


class ToyModel(nn.Module):
    """What the count reads of a step's model: its modalities and its head."""

    def __init__(self, modalities: tuple[str, ...], head: nn.Module) -> None:
        nn.Module.__init__(self)
        self.modalities = modalities
        self.head = head


def integer_step(model: ToyModel, batch: int, generator: torch.Generator
                 ) -> tuple[ForwardOut, torch.Tensor]:
    """A step's outputs in small integers: every product is exact, so a count computed by a
    batched product equals the per-step one exactly, ties included."""
    dims = model.head.dims
    features = [torch.randint(-3, 4, (batch, d), generator=generator).float() for d in dims]
    logits = torch.randint(-3, 4, (batch, model.head.num_classes), generator=generator).float()
    labels = torch.randint(0, model.head.num_classes, (batch,), generator=generator)
    return ForwardOut(model, features, logits), labels


def integer_update(head: nn.Module, generator: torch.Generator) -> None:
    """An optimizer step's in-place update, keeping the state integer (the concat head's
    bias a multiple of M, so b / M stays exact)."""
    with torch.no_grad():
        for name, p in head.named_parameters():
            scale = len(head.dims) if name.endswith("bias") else 1
            p.copy_(torch.randint(-3, 4, p.shape, generator=generator).float() * scale)


def direct_hits(out: ForwardOut, labels: torch.Tensor) -> torch.Tensor:
    """The per-step count: fused and every modality's scoring logits, with the head as the
    step left it."""
    with torch.no_grad():
        logits = [out.logits] + [out.model.head.unimodal(out.features, m)
                                 for m in range(len(out.model.modalities))]
    return torch.stack([(z.argmax(-1) == labels).sum() for z in logits])


@pytest.mark.parametrize("fusion", AFFINE)
@settings(max_examples=10, deadline=None)
@given(steps=st.integers(1, 2 * CHUNK + 3), seed=st.integers(0, 999))
def test_counts_equal_the_per_step_count_over_chunks_batch_sizes_and_models(fusion, steps, seed):
    """Steps of two models (different modalities) and two batch sizes, interleaved, over more
    than one chunk: every count equals what a per-step count gives."""
    generator = torch.Generator().manual_seed(seed)
    models = [ToyModel(("a", "b"), build_fusion(fusion, (3, 2), 4)),
              ToyModel(("a", "b", "c"), build_fusion(fusion, (2, 2, 3), 5))]
    counter = TrainingAccuracy()
    want: dict[tuple[str, ...], torch.Tensor] = {}
    for i in range(steps):
        model = models[i % 3 == 0]
        integer_update(model.head, generator)  # the step's optimizer update, then its count
        out, labels = integer_step(model, 4 if i % 2 else 6, generator)
        counter.add(out, labels)
        key = model.modalities
        want[key] = want.get(key, 0) + direct_hits(out, labels)
    assert counter.read() == {k: v.tolist() for k, v in want.items()}
    assert counter.read() == {}  # a read empties the counter


def test_a_step_counts_with_the_head_as_it_left_it_not_as_a_later_step_did():
    generator = torch.Generator().manual_seed(3)
    model = ToyModel(("a", "b"), build_fusion("concat", (3, 2), 4))
    counter = TrainingAccuracy()
    integer_update(model.head, generator)
    out, labels = integer_step(model, 8, generator)
    want = direct_hits(out, labels)
    counter.add(out, labels)
    with torch.no_grad():
        model.head.fc.weight.mul_(-1)  # the next step's update, before the count is evaluated
    assert counter.read() == {("a", "b"): want.tolist()}


@settings(max_examples=10, deadline=None)
@given(steps=st.integers(1, 2 * CHUNK + 3), seed=st.integers(0, 999))
def test_the_fused_count_alone_equals_the_per_step_fused_count(steps, seed):
    """`modalities=False` (the default of `train.modality_train_acc`): one count per model,
    the fused logits' hits, whatever the batch sizes and chunks."""
    generator = torch.Generator().manual_seed(seed)
    models = [ToyModel(("a", "b"), build_fusion("concat", (3, 2), 4)),
              ToyModel(("a", "b", "c"), build_fusion("gated", (2, 2, 3), 5))]
    counter = TrainingAccuracy(modalities=False)
    want: dict[tuple[str, ...], int] = {}
    for i in range(steps):
        model = models[i % 3 == 0]
        out, labels = integer_step(model, 4 if i % 2 else 6, generator)
        counter.add(out, labels)
        want[model.modalities] = want.get(model.modalities, 0) + int(
            (out.logits.argmax(-1) == labels).sum())
    assert counter.read() == {k: [v] for k, v in want.items()}


def test_a_run_long_counter_reuses_its_room_and_lets_go_of_models_no_longer_trained():
    """Epoch after epoch the chunk's preallocated room serves again; a head rebuilt with
    other state shapes gets new room; a model no step used since the last read is released."""
    import gc
    import weakref

    generator = torch.Generator().manual_seed(5)
    counter = TrainingAccuracy()
    model = ToyModel(("a", "b"), build_fusion("concat", (3, 2), 4))
    for _ in range(2):  # two epochs of the same model: the same room
        out, labels = integer_step(model, 4, generator)
        want = direct_hits(out, labels)
        counter.add(out, labels)
        room = next(iter(counter._chunks.values())).states[0]
        assert counter.read() == {("a", "b"): want.tolist()}
        assert next(iter(counter._chunks.values())).states[0] is room
    model.head = build_fusion("concat", (3, 2), 6)  # rebuilt: [6, 5] weights, not [4, 5]
    out, labels = integer_step(model, 4, generator)
    want = direct_hits(out, labels)
    counter.add(out, labels)
    assert counter.read() == {("a", "b"): want.tolist()}
    assert next(iter(counter._chunks.values())).states[0] is not room

    other = ToyModel(("c", "d"), build_fusion("sum", (2, 2), 3))
    released = weakref.ref(model)
    del model, out
    counter.add(*integer_step(other, 5, generator))
    counter.read()
    gc.collect()
    assert released() is None
