"""MSA²Net (models.md §5): official keys, counts and outputs, checkpoint loading, CPU training, input checks, ONNX."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import training.models.msa2net as msa2net_mod  # registers "msa2net" (the package __init__ does not import it yet)
from training import create_model, get_spec, load_model
from training.models.msa2net import Msa2Net

HW = 224
OFFICIAL = {"in_channels": 1, "num_classes": 9}  # Msa2Net(num_classes=9) as executed; 1-channel CT slices
# Registered by the official model but never called in forward (models.md §5.3), 22.6 M parameters.
UNUSED_PREFIXES = (
    "backbone.conv.",
    "decoder_3.x1_linear.",
    "decoder_3.ag_attn.",
    "decoder_3.ag_attn_norm.",
    "decoder_3.layer_lka_1.",
    "decoder_3.layer_lka_2.",
    "decoder_2.ag_attn.",
)


# Official outputs for _fake_state_dict(msa2net.tsv, seed=1) and randn(1, 1, 224, 224, seed 7), see below.
OFFICIAL_CLASS_MEANS = [-0.077115, 0.220328, 0.049588, -0.218645, -0.234374, 0.310211, -0.102332, -0.112028, -0.203123]
OFFICIAL_PIXEL_100_37 = [1.269781, 0.090533, 0.691404, -0.51597, 1.154789, 1.201476, 0.073806, 0.037058, 0.873029]


def _read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            k, shape = line.split("\t")
            out[k] = tuple(ast.literal_eval(shape))
    return out


def _fake_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, torch.Tensor]:
    """Random weights of the given shapes, scaled so every branch matters (LayerScales well above their 1e-6 init)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif k.endswith(("gamma", "layer_scale_1", "layer_scale_2")):
            sd[k] = torch.rand(shape, generator=g) * 0.5 + 0.1
        elif len(shape) == 1:
            base = 1.0 if k.endswith(".weight") else 0.0  # norm scales around 1, biases around 0
            sd[k] = base + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            sd[k] = torch.randn(shape, generator=g) / fan_in**0.5
    return sd


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP spin-waiting makes eager CPU ops ~5x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _meta(**kw) -> Msa2Net:
    with torch.device("meta"):
        return Msa2Net(**kw)


@pytest.fixture(scope="module")
def official_ref(reference_keys_dir) -> dict[str, tuple[int, ...]]:
    return _read_tsv(reference_keys_dir / "msa2net.tsv")


@pytest.fixture(scope="module")
def polyp_model() -> Msa2Net:
    """The registry default (RGB in, one logit map out) with random non-trivial weights."""
    model = create_model("msa2net")
    model.load_state_dict(_fake_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed=2))
    return model


def test_spec():
    s = get_spec("msa2net")
    assert s.input_hw == (HW, HW) and s.fixed_size and s.size_divisor == 32
    assert s.in_channels == 3 and s.num_classes == 1 and s.output_activation == "sigmoid"
    assert s.mean == (0.5, 0.5, 0.5) and s.std == (0.5, 0.5, 0.5)
    assert s.in_channels_key == "backbone.conv.0.weight" and s.num_classes_key == "decoder_0.last_layer.weight"


def test_official_keys_and_shapes(official_ref):
    assert len(official_ref) == 1060
    ours = {k: tuple(v.shape) for k, v in _meta(**OFFICIAL).state_dict().items()}
    assert set(official_ref) - set(ours) == set()
    assert set(ours) - set(official_ref) == set()
    assert {k for k in ours if ours[k] != official_ref[k]} == set()
    # the encoder carries timm's maxvit_rmlp_small_rw_224 names (minus head.fc) under backbone.backbone.
    assert sum(k.startswith("backbone.backbone.") for k in ours) == 651


def test_parameter_counts():
    def count(m, prefixes=("",)):
        return sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefixes))

    official = _meta(**OFFICIAL)
    assert count(official) == 93_660_877  # models.md §5.4: as executed, 9 classes (93.66 M)
    assert round(count(official) / 1e6, 2) == 93.66
    assert count(_meta(in_channels=1, num_classes=1)) == 93_660_101  # §5.4: as executed, 1 class
    # polyp default: the (unused) adapter conv is 3→3 instead of 1→3, six weights more
    assert count(_meta()) == 93_660_101 + 6
    assert count(official, ("backbone.",)) == 64_126_056  # §5.1: backbone parameters
    assert round(count(official, UNUSED_PREFIXES) / 1e6, 1) == 22.6  # §5.3: registered but unused


def test_official_checkpoint_loads_and_infers_io(official_ref):
    sd = _fake_state_dict(official_ref)
    model = load_model("msa2net", sd)
    assert not model.training
    assert model.in_channels == 1 and model.num_classes == 9
    assert model.spec.in_channels == 1 and model.spec.num_classes == 9
    assert torch.equal(model.state_dict()["decoder_0.last_layer.weight"], sd["decoder_0.last_layer.weight"])
    x = torch.randn(1, 1, HW, HW, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 9, HW, HW) and torch.isfinite(out).all()
    # Same-weights parity with the official code: these values were produced by xmindflow/MSA-2Net @209ca722
    # (Msa2Net(num_classes=9) with its vendored timm-0.6 MaxxViT, CPU, FP32) from the same fake state_dict and
    # input. They pin the encoder, the executed decoder and both token-scramble views (|logits| up to 4.5).
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.tensor(OFFICIAL_CLASS_MEANS), atol=1e-4)
    assert torch.allclose(out[0, :, 100, 37], torch.tensor(OFFICIAL_PIXEL_100_37), atol=1e-4)


def test_forward_backward_cpu(polyp_model):
    model = polyp_model.train()
    model.zero_grad()
    out = model(torch.randn(1, 3, HW, HW))
    assert out.shape == (1, 1, HW, HW)
    F.binary_cross_entropy_with_logits(out, torch.rand_like(out)).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    unused = {n for n, _ in model.named_parameters() if n.startswith(UNUSED_PREFIXES)}
    # exactly the official never-called modules receive no gradient, and they are the frozen ones
    assert no_grad == unused == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {m + "." for m in model.unused_modules()} == set(UNUSED_PREFIXES)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)


def test_wrong_input_is_one_line_error(polyp_model):
    model = polyp_model.eval()
    cases = [
        (torch.randn(1, 3, 256, 256), ValueError, r"only accepts 224x224 inputs, got 256x256"),
        (torch.randn(1, 3, 224, 192), ValueError, r"only accepts 224x224 inputs, got 224x192"),
        (torch.randn(1, 1, HW, HW), ValueError, r"expected 3 input channels, got 1"),
        (torch.randn(3, HW, HW), ValueError, r"4-D input"),
    ]
    for x, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            model(x)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="multiples of 32"):
        Msa2Net(input_hw=(200, 200))
    with pytest.raises(ValueError, match="download"):
        Msa2Net(pretrained=True)


def test_timm_encoder_weights_load(tmp_path):
    # a timm maxvit_rmlp_small_rw_224 state_dict (its own names, with head.fc) loads into the encoder
    enc = _meta().backbone.backbone
    sd = _fake_state_dict({k: tuple(v.shape) for k, v in enc.state_dict().items()}, seed=3)
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.zeros(1000, 768), torch.zeros(1000)
    path = tmp_path / "maxvit_rmlp_small_rw_224_sw-6ef0ae4f.pth"
    torch.save(sd, path)
    model = Msa2Net(pretrained=path)
    got = model.backbone.backbone.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in got)
    del sd["stem.conv1.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match="missing keys"):
        msa2net_mod.load_maxvit_imagenet(model.backbone.backbone, path)


def test_onnx_export_matches_pytorch(polyp_model, tmp_path):
    import warnings

    import numpy as np
    import onnxruntime as ort

    model = polyp_model.eval()
    x = torch.randn(1, 3, HW, HW)
    path = tmp_path / "msa2net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape == (1, 1, HW, HW)
    assert np.abs(ref).max() > 0.1  # non-trivial logits
    assert float(np.abs(got - ref).max()) <= 1e-3


def test_other_channel_counts_run_the_adapter():
    model = Msa2Net(in_channels=4).eval()
    assert "backbone.conv" not in model.unused_modules()
    assert all(p.requires_grad for p in model.backbone.conv.parameters())
    with torch.no_grad():
        assert model(torch.randn(1, 4, HW, HW)).shape == (1, 1, HW, HW)
