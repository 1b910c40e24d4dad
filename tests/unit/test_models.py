import pytest
import torch

from bbench.config.specs import ModelSpec
from bbench.models.fusion import FUSIONS, build_fusion
from bbench.models.multimodal import apply_keep, build_multimodal_model, check_modality_names
from bbench.testing.methods import toy_batch, toy_info

ADDITIVE = ["concat", "sum", "shared", "cosine"]


@pytest.mark.parametrize("fusion", ADDITIVE)
@pytest.mark.parametrize("dims", [(5, 3), (4, 7, 2)])
def test_unimodal_logits_sum_to_fused_logits(fusion, dims):
    torch.manual_seed(0)
    head = build_fusion(fusion, dims, 6)
    feats = [torch.randn(10, d) for d in dims]
    total = sum(head.unimodal(feats, i) for i in range(len(dims)))
    torch.testing.assert_close(total, head(feats), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ADDITIVE)
def test_affine_contributions_reproduce_the_head(fusion):
    head = build_fusion(fusion, (5, 3, 4), 6)
    feats = [torch.randn(7, d) for d in (5, 3, 4)]
    contrib, bias = head.affine_contributions(feats)
    assert contrib.shape == (3, 7, 6)
    torch.testing.assert_close(bias + contrib.sum(0), head(feats), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_nonlinear_heads_have_no_affine_form_and_mask_others_for_unimodal(fusion):
    head = build_fusion(fusion, (5, 3), 4)
    feats = [torch.randn(6, 5), torch.randn(6, 3)]
    assert head.affine_contributions(feats) is None
    torch.testing.assert_close(head.unimodal(feats, 0), head([feats[0], torch.zeros(6, 3)]))


def test_concat_split_head_uses_column_blocks_and_shares_the_bias():
    head = build_fusion("concat", (2, 3), 4)
    feats = [torch.randn(5, 2), torch.randn(5, 3)]
    expected = feats[1] @ head.fc.weight[:, 2:].t() + head.fc.bias / 2
    torch.testing.assert_close(head.unimodal(feats, 1), expected)


def test_input_masking_zeroes_raw_input_and_feature_keep_zeroes_features():
    info = toy_info()
    model = build_multimodal_model(info, ModelSpec()).eval()
    batch = toy_batch(info)
    masked = model.encode(batch, present=[True, False])
    zero_features = model.zero_input_features(batch)
    torch.testing.assert_close(masked[1], zero_features[1].expand_as(masked[1]))
    keep = torch.tensor([[True, False]] * 8)
    kept = apply_keep(model.encode(batch), keep)
    assert torch.count_nonzero(kept[1]) == 0
    torch.testing.assert_close(kept[0], model.encode(batch)[0])


def test_encoders_are_registered_in_modality_order_before_the_head():
    info = toy_info(dims=(3, 4, 5), names=("z", "a", "m"))
    model = build_multimodal_model(info, ModelSpec())
    names = [n for n, _ in model.named_parameters()]
    assert names[0].startswith("encoders.z.") and names[-1].startswith("head.")
    assert list(model.encoders) == ["z", "a", "m"]


@pytest.mark.parametrize("bad", [("a", "label"), ("a.b",), ("x", "x"), ("",)])
def test_bad_modality_names_are_refused(bad):
    with pytest.raises(ValueError, match="modality name|distinct"):
        check_modality_names(bad)


def test_fusion_registry_lists_every_kind():
    assert set(FUSIONS) == {"concat", "sum", "shared", "film", "gated", "cosine"}
