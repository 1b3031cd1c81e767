"""Multi-scale self-guided attention network (``msga``, official ``DAF_stack``): keys, loading, forward/backward,
PAM/CAM against their formulas, ONNX parity and parameter counts (models.md §6, §7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import training.models.msga as msga_mod  # the package __init__ does not import the family yet
from training import create_model, get_spec, load_model
from training.models.blocks import ChannelAttention, PositionAttention
from training.models.msga import SCALE_MODULES, UNUSED_MODULES, MSGAOutputs
from tests.official_keys import fake_state_dict, read_tsv

SMALL = 64
OFFICIAL = {"in_channels": 1, "num_classes": 5}
# models.md §6.1 / §6.3
N_REGISTERED = 104_511_475
N_EXECUTED = 103_556_063
N_BACKBONE = 86_736_064
N_HEAD = 17_775_411
N_SEMANTIC = 6_970_496


def _read_tsv(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    return list(read_tsv(path).items())


_fake_official = fake_state_dict


@pytest.fixture(scope="module")
def official_ref(reference_keys_dir) -> list[tuple[str, tuple[int, ...]]]:
    return _read_tsv(reference_keys_dir / "daf_stack.tsv")


@pytest.fixture(scope="module")
def official_model():
    return create_model("msga", **OFFICIAL)


@pytest.fixture(scope="module")
def polyp_model():
    return create_model("msga")


# ----------------------------------------------------------------------------------------------- registry
def test_spec():
    s = get_spec("msga")
    assert s.input_hw == (256, 256) and s.in_channels == 3 and s.num_classes == 1 and s.size_divisor == 32
    assert s.output_activation == "sigmoid" and s.mean == (0.485, 0.456, 0.406) and not s.fixed_size
    assert s.plugin_blocks == ("PositionAttention", "ChannelAttention")
    assert s.in_channels_key == "resnext.layer0.0.weight" and s.num_classes_key == "predict1_2.weight"


# ----------------------------------------------------------------------------------------------- (a) keys
def test_official_keys_and_shapes(official_model, official_ref):
    assert len(official_ref) == 1372
    ours = [(k, tuple(v.shape)) for k, v in official_model.state_dict().items()]
    assert set(ours) == set(official_ref)
    assert ours == official_ref, "same keys, shapes and registration order as DAF_stack()"


def test_polyp_default_differs_only_in_io_layers(polyp_model, official_model):
    ours = {k: tuple(v.shape) for k, v in polyp_model.state_dict().items()}
    off = {k: tuple(v.shape) for k, v in official_model.state_dict().items()}
    assert set(ours) == set(off)
    diff = {k for k in ours if ours[k] != off[k]}
    heads = {f"predict{i}{s}.{p}" for i in range(1, 5) for s in ("", "_2") for p in ("weight", "bias")}
    assert diff == {"resnext.layer0.0.weight"} | heads
    assert ours["resnext.layer0.0.weight"] == (64, 3, 7, 7) and ours["predict1.weight"] == (1, 64, 1, 1)


# ----------------------------------------------------------------------------------------------- (b) loading
def test_official_checkpoint_loads_and_infers_io(official_ref):
    sd = _fake_official(official_ref)
    # as a DataParallel-prefixed dict, the way many official-era scripts save it
    model = load_model("msga", {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3})
    assert not model.training
    assert model.in_channels == 1 and model.num_classes == 5
    assert model.spec.in_channels == 1 and model.spec.num_classes == 5
    own = model.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in sd)

    # Eval forward: (B, 5, H, W) logits, and the official scale → module-name mapping (models.md §6.2 table),
    # checked through the call order and the inputs the stage-1 attention layers receive.
    calls, seen = [], {}
    watched = {"down4", "down1"} | {f"pam_attention_{s}_{j}" for s in (1, 2) for j in range(1, 5)}
    watched |= {f"cam_attention_{s}_{j}" for s in (1, 2) for j in range(1, 5)}
    watched |= {"semanticModule_1_1", "semanticModule_2_1"} | {n for row in SCALE_MODULES for n in row[2:4] + row[5:]}
    watched |= {f"predict{i}_2" for i in range(1, 5)}
    hooks = []
    for name in watched:
        def hook(mod, args, out, name=name):
            calls.append(name)
            seen.setdefault(name, (args[0].detach(), out.detach() if torch.is_tensor(out) else None))
        hooks.append(getattr(model, name).register_forward_hook(hook))
    x = torch.randn(1, 1, SMALL, SMALL)
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (1, 5, SMALL, SMALL) and torch.isfinite(out).all()
    expected = ["down4", "down1"]
    for stage, (col, sem) in ((1, (1, "semanticModule_1_1")), (2, (4, "semanticModule_2_1"))):
        for row in SCALE_MODULES:
            expected += [sem, f"pam_attention_{row[col]}", f"cam_attention_{row[col]}", row[col + 1], row[col + 2]]
    expected += ["predict4_2", "predict3_2", "predict2_2", "predict1_2"]
    assert calls == expected
    q = SMALL // 4
    down4 = F.interpolate(seen["down4"][1], size=(q, q), mode="bilinear", align_corners=False)
    assert torch.allclose(seen["pam_attention_1_4"][0][:, :64], down4)
    assert torch.equal(seen["pam_attention_1_1"][0][:, :64], seen["down1"][1])
    assert torch.equal(seen["cam_attention_1_4"][0], seen["pam_attention_1_4"][0])


# ----------------------------------------------------------------------------------------------- (c) fwd / bwd
def test_forward_backward(polyp_model):
    model = polyp_model.train()
    x = torch.randn(1, 3, SMALL, SMALL)  # batch 1 keeps this quick; the "all" test below runs batch 2
    coarse_calls = []
    hook = model.predict1.register_forward_hook(lambda *a: coarse_calls.append(1))
    with torch.no_grad():
        out = model(x)  # default: the eval output, in train mode too; the coarse heads are not run
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, SMALL, SMALL) and not coarse_calls
    # deep supervision, the toolkit convention: (main, predict1..4, predict1_2..4_2), all logit maps at H×W
    outs = model(x, return_aux=True)
    hook.remove()
    assert isinstance(outs, tuple) and len(outs) == 9 and coarse_calls == [1]
    assert all(isinstance(o, torch.Tensor) and o.shape == (1, 1, SMALL, SMALL) for o in outs)
    assert torch.allclose(outs[0], sum(outs[5:]) / 4)
    model.zero_grad(set_to_none=True)
    sum(F.binary_cross_entropy_with_logits(o, torch.rand_like(o)) for o in outs).backward()
    for name, p in model.named_parameters():
        if name.split(".")[0] in UNUSED_MODULES:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 1, 96, 64)  # non-square works
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match="return_aux must be"):
        model(x, return_aux="coarse")


def test_aux_outputs_and_official_loss_backward(official_model):
    model = official_model.train()
    size = 32  # smallest legal size (layer4 is 1×1; BN still sees 2 values per channel at batch 2): keeps it quick
    x = torch.randn(2, 1, size, size)
    aux = model(x, return_aux="all")
    assert isinstance(aux, MSGAOutputs)
    q = size // 4
    assert aux.logits.shape == (2, 5, size, size)
    assert all(t.shape == (2, 5, size, size) for t in aux.coarse + aux.fine)
    # flattened over the whole batch, as the official view(-1)
    assert all(t.shape == (2 * 512 * (q // 4) ** 2,) for t in aux.sem_vectors_1 + aux.sem_vectors_2)
    assert all(t.shape == (2, 128, q, q) for t in aux.sem_inputs + aux.sem_outputs)
    assert torch.allclose(aux.logits, sum(aux.fine) / 4)
    official = aux.official_tuple()
    assert len(official) == 32 and official[0] is aux.sem_vectors_1[0] and official[1] is aux.sem_vectors_2[0]
    assert official[8:16] == aux.sem_inputs and official[16:24] == aux.sem_outputs
    assert official[24:] == aux.coarse + aux.fine
    with torch.no_grad():  # pairing: input i → output i (down1 first); vectors down4 first; stage 2 = the 2nd module
        for i, (mod, vec_i) in enumerate([("semanticModule_1_1", 3), ("semanticModule_2_1", 7)]):
            vec, out = getattr(model, mod)(aux.sem_inputs[4 * i])
            assert torch.allclose(out, aux.sem_outputs[4 * i], atol=1e-5)
            vec, _ = getattr(model, mod)(aux.sem_inputs[vec_i])
            assert torch.allclose(vec, (aux.sem_vectors_1, aux.sem_vectors_2)[i][0], atol=1e-5)
    # the official multi-term loss (models.md §6.4)
    target = torch.randint(0, 5, (2, size, size))
    loss = sum(F.cross_entropy(p, target) for p in aux.coarse + aux.fine)
    loss = loss + 0.25 * sum(F.mse_loss(a, b) for a, b in zip(aux.sem_vectors_1, aux.sem_vectors_2))
    loss = loss + 0.1 * sum(F.mse_loss(a, b) for a, b in zip(aux.sem_inputs, aux.sem_outputs))
    model.zero_grad(set_to_none=True)
    loss.backward()
    with_grad = [p for p in model.parameters() if p.grad is not None]
    assert all(p.requires_grad for p in with_grad)
    assert len(with_grad) == sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in with_grad) == N_EXECUTED  # models.md §6.3 "executed"
    assert all(torch.isfinite(p.grad).all() for p in with_grad)
    model.zero_grad(set_to_none=True)
    model.eval()


# ----------------------------------------------------------------------------------------------- (d) PAM / CAM
def _pam_formula(m: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    n = h * w
    def conv(layer):
        return torch.einsum("oc,bcn->bon", layer.weight[:, :, 0, 0], x.reshape(b, c, n)) + layer.bias[None, :, None]
    q, k, v = conv(m.query_conv), conv(m.key_conv), conv(m.value_conv)  # (B, C', N)
    out = torch.empty(b, c, n, dtype=x.dtype)
    for bi in range(b):
        energy = q[bi].T @ k[bi]  # (N, N): energy[i, j] = q_i · k_j
        attn = torch.exp(energy - energy.max(dim=1, keepdim=True).values)
        attn = attn / attn.sum(dim=1, keepdim=True)
        out[bi] = (attn @ v[bi].T).T  # position i gathers Σ_j attn[i, j] v_j
    return m.gamma * out.reshape(b, c, h, w) + x


def _cam_formula(m: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    out = torch.empty(b, c, h * w, dtype=x.dtype)
    for bi in range(b):
        xf = x[bi].reshape(c, h * w)
        energy = xf @ xf.T  # (C, C)
        e = energy.max(dim=1, keepdim=True).values - energy
        attn = torch.exp(e - e.max(dim=1, keepdim=True).values)
        attn = attn / attn.sum(dim=1, keepdim=True)
        out[bi] = attn @ xf
    return m.gamma * out.reshape(b, c, h, w) + x


def test_position_attention_matches_formula():
    m = PositionAttention(64).double()
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64)
    assert torch.equal(m(x), x), "gamma starts at 0: the block starts as the identity"
    with torch.no_grad():
        m.gamma.fill_(0.7)
    assert torch.allclose(m(x), _pam_formula(m, x), atol=1e-10)
    assert [k for k, _ in m.named_parameters()] == [
        "gamma", "query_conv.weight", "query_conv.bias", "key_conv.weight", "key_conv.bias", "value_conv.weight",
        "value_conv.bias"]
    assert m.query_conv.weight.shape == (8, 64, 1, 1) and m.value_conv.weight.shape == (64, 64, 1, 1)


def test_channel_attention_matches_formula():
    m = ChannelAttention(64).double()
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64)
    assert torch.equal(m(x), x)
    with torch.no_grad():
        m.gamma.fill_(-1.3)
    ref = _cam_formula(m, x)
    assert torch.allclose(m(x), ref, atol=1e-10)
    # rowmax − E is kept as written; softmax is shift-invariant, so it equals softmax(−E) (a sanity check of the form)
    xf = x.flatten(2)
    alt = m.gamma * torch.bmm(torch.softmax(-torch.bmm(xf, xf.transpose(1, 2)), -1), xf).view_as(x) + x
    assert torch.allclose(ref, alt, atol=1e-10)
    assert [k for k, _ in m.named_parameters()] == ["gamma"]


def test_plugin_blocks_are_present(polyp_model):
    kinds = [type(m).__name__ for m in polyp_model.modules()]
    assert kinds.count("PositionAttention") == 8 and kinds.count("ChannelAttention") == 8


# ----------------------------------------------------------------------------------------------- (e) ONNX
def test_onnx_export_parity(polyp_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import warnings

    import numpy as np

    model = polyp_model.eval()
    # exercise the attention paths (gamma = 0 at init makes PAM/CAM the identity)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (PositionAttention, ChannelAttention)):
                m.gamma.fill_(0.5)
    x = torch.randn(1, 3, SMALL, SMALL)
    path = tmp_path / "msga.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert len(graph.output) == 1, "no training-only outputs in the exported graph"
    ops = [n.op_type for n in graph.node]
    # 8 PAM × 2 + 8 CAM × 2 matmuls, 16 softmaxes, 8 CAM row maxima (models.md §6.6); 3 + 4 bilinear resizes
    assert ops.count("MatMul") == 32 and ops.count("Softmax") == 16 and ops.count("ReduceMax") == 8
    assert ops.count("Resize") == 7 and ops.count("ConvTranspose") == 16
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})
    assert len(got) == 1
    with torch.no_grad():
        ref = model(x).numpy()
    assert got[0].shape == ref.shape == (1, 1, SMALL, SMALL)
    diff, scale = float(np.abs(got[0] - ref).max()), float(np.abs(ref).max())
    assert diff <= 1e-3, f"max |Δlogit| {diff:.2e} (max |logit| {scale:.2e})"
    assert diff <= 1e-4 * scale, f"max |Δlogit| {diff:.2e} is large relative to max |logit| {scale:.2e}"
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (PositionAttention, ChannelAttention)):
                m.gamma.zero_()


# ----------------------------------------------------------------------------------------------- (f) counts
def test_parameter_counts(official_model, polyp_model):
    def count(mod):
        return sum(p.numel() for p in mod.parameters())

    assert count(official_model) == N_REGISTERED  # models.md §6.3: 104,511,475 registered
    assert count(official_model.resnext) == N_BACKBONE
    assert count(official_model) - count(official_model.resnext) == N_HEAD
    assert count(official_model.semanticModule_1_1) == count(official_model.semanticModule_2_1) == N_SEMANTIC
    assert sum(p.numel() for p in official_model.parameters() if p.requires_grad) == N_EXECUTED
    # polyp default: conv1 takes 3 channels (+6,272), the 8 heads emit 1 map (−8·4·65 = −2,080)
    assert count(polyp_model) == N_REGISTERED + 64 * 2 * 49 - 8 * 4 * 65


def test_meta_device_build_and_bad_init():
    with torch.device("meta"):
        m = msga_mod.MSGANet()
    assert sum(p.numel() for p in m.parameters()) == N_REGISTERED + 64 * 2 * 49 - 8 * 4 * 65
    with pytest.raises(ValueError, match="unknown init"):
        msga_mod.MSGANet(init="kaiming")
