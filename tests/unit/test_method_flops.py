"""Training FLOPs include every extra pass a method makes (methods.md §2, "passes per training
step" and "extra cost per epoch"), by the amount the pass structure predicts.

The predictions are built here from measured building blocks, never from a method's own code:
the forward FLOPs of each encoder and of each head (`count_forward_flops`) and their backward
FLOPs (FlopCounterMode around a backward through that module alone), per sample, on the run's
own mfeat model (MLP encoders, concat head). Units as bbench's: torch's FlopCounterMode counts
matrix products and convolutions only, FLOPs = 2 x multiply-adds; element-wise work, softmax,
cross-entropy, norms and everything outside torch (NumPy, scikit-learn) count 0.

Every run has the same budget: mfeat with 20 training samples per class (200 samples; with
batch size 16 and drop_last, 12 steps = 192 samples a pass), 2 epochs, `train.flops="all"`
(every step counted, nothing extrapolated). Each test asserts

- the building blocks reproduce Baseline's measured step FLOPs exactly (F + Bw per sample);
- the method's training FLOPs exceed Baseline's;
- the excess over Baseline, and the total, are the predicted ones within 5 %.

The excess is the sharp check: PMR's prototype pass is ~3 % of the run, so a total within 5 %
would pass even if the pass were not counted at all.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bbench
from bbench.config.resolve import resolve_spec
from bbench.data.registry import build_datamodule
from bbench.engine.evaluate import eval_loader
from bbench.engine.flops import count_forward_flops
from bbench.models.fusion import SharedHead
from bbench.models.multimodal import build_multimodal_model

EPOCHS = 2
BATCH = 16
BUDGET: dict[str, Any] = {"epochs": EPOCHS, "batch_size": BATCH, "progress": False,
                          "train.flops": "all", "dataset.options": {"subsample_per_class": 20}}
TOLERANCE = 0.05


def backward_flops(fn) -> int:
    """FLOPs of one backward: `fn()` builds the graph outside the counter; its output's
    backward (upstream gradient of ones, which costs no counted op) runs inside it."""
    out = fn()
    counter = FlopCounterMode(display=False)
    with counter:
        out.backward(torch.ones_like(out))
    return int(counter.get_total_flops())


class Blocks:
    """Per-sample FLOPs of the mfeat model's parts, measured on one batch of BATCH samples.

    All parts are linear layers, so FLOPs are exactly proportional to the batch size and the
    per-sample figures are exact (integers divided by BATCH).
    """

    def __init__(self) -> None:
        spec = resolve_spec("Baseline", "mfeat", {"dataset.options": BUDGET["dataset.options"]})
        self.data = build_datamodule(spec.dataset)
        info = self.data.info
        self.modalities = info.modalities
        self.M = len(self.modalities)
        self.K = info.num_classes
        torch.manual_seed(0)
        model = build_multimodal_model(info, spec.model)
        batch = next(iter(eval_loader(self.data.val, BATCH, self.data.collate)))
        assert batch["label"].shape[0] == BATCH
        self.enc_fwd: dict[str, float] = {}
        self.enc_bwd: dict[str, float] = {}
        features = []
        for m in self.modalities:
            enc = model.encoders[m]
            x = batch[m]
            self.enc_fwd[m] = count_forward_flops(enc, x) / BATCH
            self.enc_bwd[m] = backward_flops(lambda: enc(x)) / BATCH  # x needs no gradient
            features.append(enc(x).detach())
        self.feature_dim = max(f.shape[1] for f in features)
        # One zero sample per modality: E_m(0), as the one-pass Shapley path forms c_m.
        self.enc_fwd_one = {m: count_forward_flops(model.encoders[m], torch.zeros_like(batch[m][:1]))
                            for m in self.modalities}
        # Concat head: forward, and backward into its weights *and* its input features
        # (in the model the features carry the encoders' graph).
        self.head_fwd = count_forward_flops(model.head, features) / BATCH
        live = [f.clone().requires_grad_(True) for f in features]
        self.head_bwd = backward_flops(lambda: model.head(live)) / BATCH
        self.F = sum(self.enc_fwd.values()) + self.head_fwd
        self.Bw = sum(self.enc_bwd.values()) + self.head_bwd
        # ReconBoost's shared head H: Linear(d_max -> K) on zero-padded h_m, one call per learner.
        shared = SharedHead([model.encoders[m].out_dim for m in self.modalities], self.K)
        self.shared_fwd = {i: count_forward_flops(shared.unimodal, features, i) / BATCH
                           for i in range(self.M)}
        self.shared_bwd = {i: backward_flops(lambda i=i: shared.unimodal(live, i)) / BATCH
                           for i in range(self.M)}
        # Steps of one training pass: drop_last batches of BATCH.
        self.n_train = len(self.data.train)
        self.n_batches = self.n_train // BATCH
        self.pass_samples = self.n_batches * BATCH
        self.n_train_eval = len(self.data.train_eval if self.data.train_eval is not None
                                else self.data.train)
        self.n_val = len(self.data.val)

    def step(self) -> float:
        """Baseline's step per sample: 1 F + 1 Bw (methods.md §2)."""
        return self.F + self.Bw


@pytest.fixture(scope="module")
def blocks() -> Blocks:
    return Blocks()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("flop_runs")
    cache: dict[str, Any] = {}

    def run(method: str, **params: Any):
        key = method + repr(sorted(params.items()))
        if key not in cache:
            cache[key] = bbench.run(method, "mfeat", output_root=str(root / method),
                                    **BUDGET, **params).metrics
        return cache[key]

    return run


def check(measured: dict, baseline: dict, predicted_total: float, label: str) -> dict:
    """Asserts the method costs more than Baseline and matches the prediction within 5 %,
    on the excess over Baseline and on the total. Returns the ratios (for the report)."""
    total, base = measured["train_flops"], baseline["train_flops"]
    assert measured["train_flops_reused"] == 0 and baseline["train_flops_reused"] == 0  # all counted
    assert total > base, f"{label}: {total} FLOPs, not above Baseline's {base}"
    excess_ratio = (total - base) / (predicted_total - base)
    total_ratio = total / predicted_total
    detail = (f"{label}: measured {total:.6e} (excess over Baseline {total - base:.6e}), "
              f"predicted {predicted_total:.6e} (excess {predicted_total - base:.6e}); "
              f"excess ratio {excess_ratio:.4f}, total ratio {total_ratio:.4f}")
    assert abs(excess_ratio - 1) <= TOLERANCE, detail
    assert abs(total_ratio - 1) <= TOLERANCE, detail
    return {"excess_ratio": excess_ratio, "total_ratio": total_ratio}


def test_the_building_blocks_reproduce_baselines_step_flops(blocks, runs):
    base = runs("Baseline")
    regions = base["train_flops_by_region"]
    assert base["train_samples"] == EPOCHS * blocks.pass_samples
    assert regions["step"] == base["train_flops"]  # Baseline has no hook with FLOPs
    assert base["train_flops"] / base["train_samples"] == pytest.approx(blocks.step(), rel=1e-9)
    assert base["forward_flops_per_sample"] == pytest.approx(blocks.F, rel=1e-9)
    # Backward ≈ 2 x forward less the first layers' input gradients (inputs need none).
    assert blocks.Bw < 2 * blocks.F


def test_agm_pays_its_eval_shapley_pass_at_every_step(blocks, runs):
    base, agm = runs("Baseline"), runs("AGM")
    M, K, B = blocks.M, blocks.K, BATCH
    subsets = 1 << M
    # bbench's one-pass path (subset_logits with the concat head): per step, one eval-mode
    # encoder pass over the batch, E_m(0) on one zero sample per modality, the head on the
    # 2^M stacked feature variants, and φ = C·f as one tensordot (C [M, 2^M] with f [2^M, B, K]:
    # 2·M·2^M·K per sample, counted as a matrix product). Every step with e <= end (end = 80:
    # all of them) makes it (observe_grads runs inside and outside the window). The gradient
    # scaling and norm clipping are element-wise: 0.
    tensordot = count_forward_flops(torch.tensordot, torch.zeros(M, subsets),
                                    torch.zeros(subsets, B, K), dims=1)
    assert tensordot == 2 * M * subsets * B * K
    per_step_extra = (B * sum(blocks.enc_fwd.values()) + sum(blocks.enc_fwd_one.values())
                      + subsets * B * blocks.head_fwd + tensordot)
    steps = EPOCHS * blocks.n_batches
    predicted = EPOCHS * blocks.pass_samples * blocks.step() + steps * per_step_extra
    # The §2 masked form, "1 F + (2^M − 1) eval F without grad, 1 Bw", would predict
    # EPOCHS·pass_samples·(F + Bw + (2^M − 1)·F) (+ the tensordot); bbench's masked-passes path
    # even runs all 2^M subsets (f(∅) computed, then replaced by 0). For mfeat (M = 2) that is
    # 3·F = 276 480 extra FLOPs per sample against the one-pass path's ~105 600: the one-pass
    # path, which methods.md §7.2 permits for the concat head, is what runs and is predicted.
    masked = EPOCHS * blocks.pass_samples * (blocks.step() + (subsets - 1) * blocks.F)
    assert masked > predicted
    assert agm["train_flops_by_region"]["epoch_start"] == 0
    assert agm["train_flops_by_region"]["epoch_end"] == 0
    check(agm, base, predicted, "AGM")


def test_pmr_pays_its_prototype_pass_at_every_active_epoch(blocks, runs):
    base, pmr = runs("Baseline"), runs("PMR")
    # n_p = max(1, ⌊proto_fraction·n_batches⌋) eval-mode encoder forwards of the run's batch
    # size (features only, no head) at the start of each active epoch (window 0..80: both).
    proto_fraction = 0.1
    n_p = max(1, math.floor(proto_fraction * blocks.n_batches))
    proto_pass = n_p * BATCH * sum(blocks.enc_fwd.values())
    # Per step, q = −cdist(h_m, P_m) and CE(q_m, y): FlopCounterMode has no formula for cdist
    # (direct Euclidean path or not, forward or backward) and none for cross-entropy, so they
    # count 0 and PMR's step costs exactly Baseline's (the prototype CE's gradient joins the
    # encoder's backward at h_m: no extra matrix product).
    h = torch.zeros(BATCH, blocks.feature_dim, requires_grad=True)
    prototypes = torch.zeros(blocks.K, blocks.feature_dim)
    labels = torch.zeros(BATCH, dtype=torch.long)

    def prototype_ce():
        q = -torch.cdist(h, prototypes, compute_mode="donot_use_mm_for_euclid_dist")
        torch.nn.functional.cross_entropy(q, labels).backward()

    assert count_forward_flops(prototype_ce) == 0
    assert count_forward_flops(torch.cdist, h, prototypes) == 0
    predicted = EPOCHS * blocks.pass_samples * blocks.step() + EPOCHS * proto_pass
    regions = pmr["train_flops_by_region"]
    assert regions["epoch_start"] == pytest.approx(EPOCHS * proto_pass, rel=TOLERANCE)
    assert regions["step"] == pytest.approx(base["train_flops_by_region"]["step"], rel=TOLERANCE)
    check(pmr, base, predicted, "PMR")


def test_relearning_pays_its_feature_extraction_at_each_event(blocks, runs):
    # reinit_epoch = 1 so that the 2-epoch budget holds an event: the end of epoch 1 (never
    # epoch 0), one event (the default reinit_num = 2 is not reached).
    reinit_epoch, reinit_num = 1, 2
    base, rel = runs("Baseline"), runs("ReLearning", reinit_epoch=reinit_epoch)
    events = min(reinit_num, sum(1 for e in range(1, EPOCHS) if e % reinit_epoch == 0))
    assert events == 1
    # At an event: one eval-mode encoder pass (features only) over the whole train split
    # (train_for_eval, no drop_last) and the whole validation split. The 2M K-means runs are
    # scikit-learn/NumPy, outside torch, and the min-max scaling and soft re-initialisation are
    # element-wise: FlopCounterMode counts none of them.
    extraction = (blocks.n_train_eval + blocks.n_val) * sum(blocks.enc_fwd.values())
    predicted = EPOCHS * blocks.pass_samples * blocks.step() + events * extraction
    regions = rel["train_flops_by_region"]
    assert regions["epoch_end"] == pytest.approx(events * extraction, rel=TOLERANCE)
    assert regions["fit_start"] == 0  # θ₀ is a copy
    check(rel, base, predicted, "ReLearning")


def test_reconboost_pays_its_stages_and_corrections(blocks, runs):
    base, recon = runs("Baseline"), runs("ReconBoost")
    M = blocks.M
    stage_epochs, correct_epochs = 1, 1  # the defaults
    others = range(M)
    # ReconBoost's own model: the same encoders and a shared head H = Linear(d_max -> K)
    # applied once per learner (no concat head).
    all_fwd = sum(blocks.enc_fwd.values()) + sum(blocks.shared_fwd[k] for k in others)
    # Stage m step: F_m + (M − 1) F_k without grad (each learner's H call included), backward
    # into E_m and H only (H's backward includes the input gradient into h_m).
    stage = {i: all_fwd + blocks.enc_bwd[m] + blocks.shared_bwd[i]
             for i, m in enumerate(blocks.modalities)}
    # Correction step: 1 F of the ensemble β·Σ_m H(pad(h_m)), 1 Bw into everything (β's
    # gradient is element-wise).
    correction = all_fwd + sum(blocks.enc_bwd.values()) + sum(blocks.shared_bwd[k] for k in others)
    per_epoch = blocks.pass_samples * (stage_epochs * sum(stage.values())
                                       + M * correct_epochs * correction)
    predicted = EPOCHS * per_epoch
    assert recon["train_steps"] == EPOCHS * M * (stage_epochs + correct_epochs) * blocks.n_batches
    check(recon, base, predicted, "ReconBoost")
