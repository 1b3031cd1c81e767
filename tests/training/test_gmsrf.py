"""GMSRF-Net: official key list, checkpoint loading, forward/backward with deep supervision, ONNX parity, counts."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import training.models.gmsrf  # noqa: F401  (registers "gmsrf"; not yet imported by training/models/__init__.py)
from training import create_model, get_spec, load_model
from training.checkpoint import KNOWN_UNUSED_KEYS
from tests.official_keys import fake_state_dict, read_tsv

TRAIN_HW = 32  # smallest convenient size in train mode (the /8 scale keeps 4×4 maps for BatchNorm)
ONNX_HW = 64

# models.md §4.4
OFFICIAL_REGISTERED = 54_972_021  # EncoderBlock().parameters(), including resnet.fc
OFFICIAL_EXECUTED = 47_043_853  # parameters used in forward
RESNET_FC = 2_049_000  # resnet.fc (1000×2048 + 1000): not registered here, dropped by load_model


_read_tsv = read_tsv
_fake_official = fake_state_dict


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine this is several times faster than oversubscribing."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("gmsrf")


@pytest.fixture(scope="module")
def ref_keys(reference_keys_dir):
    return _read_tsv(reference_keys_dir / "gmsrf.tsv")


def test_spec():
    s = get_spec("gmsrf")
    assert s.input_hw == (256, 256) and s.in_channels == 3 and s.num_classes == 1
    assert s.mean == (0.0, 0.0, 0.0) and s.std == (1.0, 1.0, 1.0)  # official: /255 only
    assert s.output_activation == "sigmoid" and s.threshold == 0.5
    assert s.size_divisor == 8 and not s.fixed_size and s.plugin_blocks == ()
    assert s.in_channels_key == "conv1.conv.weight" and s.num_classes_key == "final_2.conv.weight"
    assert "2111.10614" in s.paper


def test_state_dict_matches_official_keys(model, ref_keys):
    assert len(ref_keys) == 2322
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # the only official entries not registered: the unused ImageNet classifier, dropped explicitly on load
    assert set(ref_keys) - set(ours) == set(KNOWN_UNUSED_KEYS) == {"resnet.fc.weight", "resnet.fc.bias"}
    assert set(ours) - set(ref_keys) == set()
    assert ours == {k: v for k, v in ref_keys.items() if k in ours}  # shapes
    # same order as the official module, too
    assert list(ours) == [k for k in ref_keys if k in ours]


def test_fake_official_checkpoint_loads(ref_keys, tmp_path):
    sd = _fake_official(ref_keys)
    path = tmp_path / "GMSRF-129.pth"  # the official script saves a bare state_dict
    torch.save(sd, path)
    m = load_model("gmsrf", path)
    assert not m.training
    assert set(m.checkpoint_info["dropped_unused_keys"]) == set(KNOWN_UNUSED_KEYS)
    own = m.state_dict()
    for k in ("conv1.conv.weight", "msrfv22.w4.conv.weight", "en1.conv.weight", "resnet.conv1.0.weight",
              "final_2.bn.running_var", "msrfv23.x1_w1.bn3.running_mean", "dsv8.bias"):
        assert torch.equal(own[k], sd[k]), k
    with torch.no_grad():
        out = m(torch.rand(1, 3, TRAIN_HW, TRAIN_HW))
    assert out.shape == (1, 1, TRAIN_HW, TRAIN_HW) and torch.isfinite(out).all()


def test_forward_backward_with_deep_supervision(model):
    model.train()
    x = torch.rand(2, 3, TRAIN_HW, TRAIN_HW)
    outs = model(x, return_aux=True)
    assert isinstance(outs, tuple) and len(outs) == 4
    for o in outs:
        assert o.shape == (2, 1, TRAIN_HW, TRAIN_HW)
    mask = (torch.rand(2, 1, TRAIN_HW, TRAIN_HW) > 0.5).float()
    loss = sum(F.binary_cross_entropy_with_logits(o, mask) for o in outs)
    model.zero_grad(set_to_none=True)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), "every trainable parameter takes part in forward"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    # the frozen ones are exactly the modules the official forward never runs
    prefixes = ("en", "se", "resnet.conv1.", "resnet.bn1.", "msrfv22.")
    unused_bn = [n for n in frozen if n.startswith(("msrfv21.", "msrfv23.")) and ".bn" in n]
    assert all(n.startswith(prefixes) for n in frozen if n not in unused_bn)
    assert all(n.split(".")[-2] in ("bn1", "bn2", "bn3") for n in unused_bn)
    executed = sum(p.numel() for p in model.parameters() if p.grad is not None)
    print(f"\nGMSRF executed parameters: {executed:,} (official {OFFICIAL_EXECUTED:,})")
    assert executed == OFFICIAL_EXECUTED
    # default forward: main logits only; non-square sizes that are multiples of 8 work
    model.eval()
    with torch.no_grad():
        main = model(x)
        assert torch.is_tensor(main) and main.shape == (2, 1, TRAIN_HW, TRAIN_HW)
        assert model(torch.rand(1, 3, 48, 40)).shape == (1, 1, 48, 40)


def test_bad_input_is_one_clear_line(model):
    model.eval()
    cases = [
        (torch.rand(1, 3, 70, 64), ValueError, r"multiples of 8, got 70x64; resize or pad to 72x64"),
        (torch.rand(1, 1, 64, 64), ValueError, r"expected 3 input channels, got 1"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, r"floating-point input .* got torch.uint8"),
    ]
    for x, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            model(x)
        assert "\n" not in str(info.value)


def test_channels_and_classes_variant_and_inference():
    torch.manual_seed(0)
    m = create_model("gmsrf", in_channels=1, num_classes=2).eval()
    assert m.spec.in_channels == 1 and m.spec.num_classes == 2
    x = torch.rand(1, 1, TRAIN_HW, TRAIN_HW)
    with torch.no_grad():
        outs = m(x, return_aux=True)
    assert [tuple(o.shape) for o in outs] == [(1, 2, TRAIN_HW, TRAIN_HW)] * 4
    loaded = load_model("gmsrf", m.state_dict())  # in_channels/num_classes inferred from the checkpoint
    assert loaded.in_channels == 1 and loaded.num_classes == 2
    assert loaded.spec.in_channels == 1 and loaded.spec.num_classes == 2
    with torch.no_grad():
        assert torch.equal(loaded(x), outs[0])


def test_onnx_export_matches_pytorch(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model.eval()
    x = torch.rand(1, 3, ONNX_HW, ONNX_HW)
    path = tmp_path / "gmsrf.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["logits"])
    graph = onnx.load(str(path), load_external_data=False).graph
    assert len(graph.output) == 1
    ops = {n.op_type for n in graph.node}
    # the deep-supervision heads (1×1 conv + nearest Resize) are training-only and absent from the export
    assert "Resize" not in ops
    assert not any(i.name.startswith(("dsv", "msrfv22", "en", "se")) for i in graph.initializer)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (1, 1, ONNX_HW, ONNX_HW)
    assert abs(got - want).max() <= 1e-3


def test_parameter_counts(model):
    registered = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"\nGMSRF registered parameters: {registered:,} (+ resnet.fc {RESNET_FC:,} = {registered + RESNET_FC:,}; "
          f"official {OFFICIAL_REGISTERED:,}); trainable = executed: {trainable:,} (official {OFFICIAL_EXECUTED:,})")
    assert registered + RESNET_FC == OFFICIAL_REGISTERED
    assert trainable == OFFICIAL_EXECUTED
    # the unused second GMSRF block and each used one: 5,434,368 parameters (models.md §4.4)
    assert sum(p.numel() for p in model.msrfv22.parameters()) == 5_434_368
