"""Backbone encoders: shapes, out_dim, stages, time pooling, masks, pretrained checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from bbench.config.specs import EncoderSpec
from bbench.models import ENCODERS, build_encoder
from bbench.models.backbones import CheckpointMismatchError, StagedEncoder

torch.set_num_threads(1)


def make(name: str, shape: tuple[int, ...], **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(EncoderSpec(name, options), shape, "m").eval()


def test_registered():
    for name in ("resnet18", "vit_b16", "transformer", "bert"):
        assert ENCODERS.get(name).name == name


# -- resnet18 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,channels", [((1, 64, 128), 1), ((2, 3, 32, 32), 3), ((3, 2, 32, 32), 2)])
def test_resnet18_shapes_and_stages(shape, channels):
    enc = make("resnet18", shape, in_channels=channels)
    x = torch.randn(2, *shape)
    h = enc(x)
    assert h.shape == (2, 512) and enc.out_dim == 512
    assert list(enc.stages._modules) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert enc.stages.stem.conv1.in_channels == channels
    assert isinstance(enc, StagedEncoder)
    y, ctx = enc.enter(x)
    torch.testing.assert_close(enc.exit(enc.stages(y), ctx), h)


def test_resnet18_in_channels_read_from_shape_and_checked():
    assert make("resnet18", (2, 2, 32, 32)).stages.stem.conv1.in_channels == 2
    with pytest.raises(ValueError, match="in_channels=3 .* 1 channel"):
        make("resnet18", (1, 64, 128), in_channels=3)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        make("resnet18", (128,))


def test_resnet18_time_pooling_is_mean_of_frame_features():
    enc = make("resnet18", (3, 3, 32, 32))
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([enc(x[:, t:t + 1]) for t in range(3)], dim=1)
        torch.testing.assert_close(enc(x), per_frame.mean(dim=1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        enc(torch.randn(2, 3, 32, 32))


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_resnet18_pretrained_loads_and_adapts_the_stem(imagenet_like):
    state = torch.load(imagenet_like, weights_only=True)
    rgb = make("resnet18", (2, 3, 32, 32), pretrained_path=str(imagenet_like))
    torch.testing.assert_close(rgb.stages.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    torch.testing.assert_close(rgb.stages.stem.conv1.weight, state["conv1.weight"])
    audio = make("resnet18", (1, 64, 128), in_channels=1, pretrained_path=str(imagenet_like))
    torch.testing.assert_close(audio.stages.stem.conv1.weight,
                               state["conv1.weight"].mean(dim=1, keepdim=True))
    flow = make("resnet18", (3, 2, 32, 32), pretrained_path=str(imagenet_like))
    torch.testing.assert_close(flow.stages.stem.conv1.weight,
                               state["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 2, 1, 1))
    # a bbench encoder's own state dict loads back too
    own = imagenet_like.parent / "own.pth"
    torch.save(audio.state_dict(), own)
    again = make("resnet18", (1, 64, 128), pretrained_path=str(own))
    torch.testing.assert_close(again.stages.layer1[0].bn1.running_var, audio.stages.layer1[0].bn1.running_var)


def test_resnet18_pretrained_mismatch_names_file_and_keys(imagenet_like, tmp_path):
    state = torch.load(imagenet_like, weights_only=True)
    state["layer2.0.conv1.weight"] = torch.zeros(7, 64, 3, 3)
    del state["layer3.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointMismatchError) as err:
        make("resnet18", (2, 3, 32, 32), pretrained_path=str(bad))
    text = str(err.value)
    for part in ("bad.pth", "layer2.0.conv1.weight", "(7, 64, 3, 3)", "layer3.1.bn2.bias", "extra.weight"):
        assert part in text
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        make("resnet18", (2, 3, 32, 32), pretrained_path=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="garbage.pth"):
        make("resnet18", (2, 3, 32, 32), pretrained_path=str(garbage))


# -- vit_b16 ------------------------------------------------------------------------------------
def test_vit_b16_matches_torchvision_and_pools_time():
    enc = make("vit_b16", (2, 3, 224, 224), layers=1)
    assert enc.out_dim == 768 and list(enc.stages._modules) == ["embed", "layer0"]
    ref = torchvision.models.vit_b_16(weights=None)
    ref.heads = torch.nn.Identity()
    ref.encoder.layers = ref.encoder.layers[:1]
    mapping = {"stages.embed.conv_proj.": "conv_proj.", "stages.embed.class_token": "class_token",
               "stages.embed.pos_embedding": "encoder.pos_embedding",
               "stages.layer0.": "encoder.layers.encoder_layer_0.", "norm.": "encoder.ln."}
    state = {}
    for key, value in enc.state_dict().items():
        prefix = next(p for p in mapping if key.startswith(p))
        state[mapping[prefix] + key[len(prefix):]] = value
    ref.load_state_dict(state)
    ref.eval()
    x = torch.randn(1, 2, 3, 224, 224)
    with torch.no_grad():
        h = enc(x)
        assert h.shape == (1, 768)
        per_frame = ref(x[0])  # the two frames as a batch
        torch.testing.assert_close(h[0], per_frame.mean(0), atol=1e-4, rtol=1e-4)


def test_vit_b16_validates_size_and_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="224"):
        make("vit_b16", (2, 3, 32, 32), layers=1)
    bad = tmp_path / "vit.pth"
    torch.save({"conv_proj.weight": torch.zeros(768, 3, 16, 16)}, bad)
    with pytest.raises(CheckpointMismatchError, match="vit.pth.*missing keys"):
        make("vit_b16", (1, 3, 224, 224), layers=1, pretrained_path=str(bad))


@pytest.mark.slow
def test_vit_b16_full_pretrained_round_trip(tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "vit_b_16.pth"
    ref = torchvision.models.vit_b_16(weights=None)
    torch.save(ref.state_dict(), path)
    enc = make("vit_b16", (1, 3, 224, 224), pretrained_path=str(path))
    assert len(enc.stages) == 13
    torch.testing.assert_close(enc.stages.layer11.mlp[0].weight,
                               ref.encoder.layers.encoder_layer_11.mlp[0].weight)


# -- transformer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(50, 300), (20, 74), (12, 35)])
def test_transformer_shapes(shape):
    enc = make("transformer", shape, d_model=32, heads=4)
    assert list(enc.stages._modules) == ["proj", "layer0", "layer1"]
    x = torch.randn(3, *shape)
    h = enc(x)
    assert h.shape == (3, 32) and enc.out_dim == 32
    torch.testing.assert_close(h, enc.stages(x)[:, -1])


def test_transformer_defaults_and_validation():
    enc = make("transformer", (10, 74))
    assert enc.out_dim == 1024 and len(enc.stages) == 3
    assert enc.stages.proj.conv.kernel_size == (1,) and enc.stages.layer0.self_attn.num_heads == 4
    with pytest.raises(ValueError, match="divide"):
        make("transformer", (10, 74), d_model=30, heads=4)
    with pytest.raises(ValueError, match=r"\(L, D\)"):
        make("transformer", (74,))
    with pytest.raises(ValueError, match=r"\(B, L, 74\)"):
        enc(torch.randn(2, 10, 35))


def test_transformer_pooling_options_and_positions():
    x = torch.randn(2, 8, 16)
    first = make("transformer", (8, 16), d_model=16, heads=2, pooling="first")
    torch.testing.assert_close(first(x), first.stages(x)[:, 0])
    with_pe = make("transformer", (8, 16), d_model=16, heads=2)
    without = make("transformer", (8, 16), d_model=16, heads=2, positional=False)
    same = x[:, :1].expand(2, 8, 16).contiguous()  # identical steps: only positions differ
    out = with_pe.stages(same)
    assert not torch.allclose(out[:, 0], out[:, -1])
    out = without.stages(same)
    torch.testing.assert_close(out[:, 0], out[:, -1], atol=1e-5, rtol=1e-5)


# -- bert -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=48)
    path = tmp_path_factory.mktemp("bert")
    transformers.BertModel(config).save_pretrained(str(path))
    return path


def tokens(n: int = 3, real: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (n, 40), generator=g)
    mask = torch.zeros(n, 40, dtype=torch.long)
    mask[:, :real] = 1
    ids[:, real:] = 0
    return torch.stack([ids, mask], dim=1)


def test_bert_shapes_and_mask(tiny_bert):
    enc = make("bert", (2, 40), model_path=str(tiny_bert), out_dim=16)
    assert list(enc.stages._modules) == ["bert", "dropout", "proj"] and enc.out_dim == 16
    x = tokens()
    h = enc(x)
    assert h.shape == (3, 16)
    y = x.clone()
    y[:, 0, 7:] = torch.randint(5, 64, (3, 33))  # change only padded positions
    torch.testing.assert_close(enc(y), h)
    z = x.clone()
    z[:, 1, 7:9] = 1
    z[:, 0, 7:9] = 11  # two more real tokens do change it
    assert not torch.allclose(enc(z), h)
    assert torch.isfinite(enc(torch.zeros(2, 2, 40, dtype=torch.long))).all()  # masked input


def test_bert_dropout_only_in_training(tiny_bert):
    enc = make("bert", (2, 40), model_path=str(tiny_bert), out_dim=8)
    x = tokens(seed=1)
    torch.testing.assert_close(enc(x), enc(x))
    enc.train()
    torch.manual_seed(0)
    a = enc(x)
    b = enc(x)
    assert not torch.allclose(a, b)


def test_bert_default_out_dim_and_freeze(tiny_bert):
    enc = make("bert", (2, 40), model_path=str(tiny_bert), freeze=True)
    assert enc.out_dim == 1024
    assert not any(p.requires_grad for p in enc.stages.bert.parameters())
    assert all(p.requires_grad for p in enc.stages.proj.parameters())


def test_bert_errors(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="model_path is not set"):
        make("bert", (2, 40))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        make("bert", (2, 40), model_path=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        make("bert", (2, 40), model_path=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32,
                                                      "num_attention_heads": 2}))
    with pytest.raises(ValueError, match="could not load"):
        make("bert", (2, 40), model_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"\(2, L\)"):
        make("bert", (40,), model_path=str(tiny_bert))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        make("bert", (2, 64), model_path=str(tiny_bert))
