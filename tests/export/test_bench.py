"""export.bench --source (the pipeline benchmark with exports, PyTorch and the naive loop) end to end on a real
CVC-ClinicDB clip: the rows, the columns, the plot, the export cache key, and one-line errors; and the torch-free
runtime.bench on model files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export.bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_bench_side_by_side_rows_on_a_real_clip(clip, data_dir, tmp_path):
    pytest.importorskip("openvino")
    out, png, work = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "work"
    kv = data_dir / "kvasir-seg"
    r = _bench("--model", "msnet_effl0", "--input-size", "96", "128", "--input-size", "64", "64", "--source", str(clip),
               "--backends", "naive,ort-fp32,openvino-int8", "--rounds", "3", "--pipeline-frames", "12",
               "--accuracy-frames", "0", "--calib-data", str(kv), "--calib-split", str(kv / "splits" / "train.txt"),
               "--calib-count", "8", "--work-dir", str(work), "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(x["backend"], x["input_hw"]) for x in rows] == [
        (b, hw) for hw in ([96, 128], [64, 64]) for b in ("naive", "ort-fp32", "openvino-int8")]
    for x in rows:
        for k in ("backend", "precision", "p50_ms", "p99_ms", "fps", "dice_vs_gt", "dice_vs_torch"):
            assert k in x, (k, x)
        assert 0 < x["p50_ms"] <= x["p99_ms"] and x["fps"] > 0
        assert 0 <= x["dice_vs_gt"] <= 1  # seq01 has masks beside its frames
    for naive, fp32, int8 in (rows[:3], rows[3:]):  # each size against its own naive loop and PyTorch reference
        assert naive["speedup_vs_naive"] == pytest.approx(1.0)
        assert fp32["speedup_vs_naive"] == pytest.approx(fp32["fps"] / naive["fps"])
        assert naive["dice_vs_torch"] == pytest.approx(1.0)
        # ONNX Runtime FP32 at the same input size computes what PyTorch computes; at 64×64 the model finds (almost)
        # no polyp in this clip, and the comparator refuses to judge a Dice over (almost) no pixels
        if fp32["input_hw"] == [96, 128]:
            assert fp32["dice_vs_torch"] > 0.98
        else:
            assert fp32["dice_vs_torch"] is None or fp32["dice_vs_torch"] > 0.98
        assert abs(fp32["dice_vs_gt"] - naive["dice_vs_gt"]) < 0.02
        assert int8["precision"] == "int8" and fp32["precision"] == "fp32"
    assert "openvino-int8 64x64" in r.stdout  # several sizes: rows are labelled with theirs
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # exports are cached per size and checkpoint, so --input-size or a new checkpoint never reuses a stale graph
    cached = sorted(p.name for p in work.glob("*.onnx"))
    assert len(cached) == 4 and sum(n.startswith("msnet_effl0-96x128-") for n in cached) == 2, cached
    from runtime.manifest import Manifest

    assert sorted(Manifest.load(p).input_hw for p in work.glob("*.onnx")) == [[64, 64]] * 2 + [[96, 128]] * 2


@pytest.mark.parametrize("case", ["size", "source", "row", "streams", "trt-streams"])
def test_bench_bad_input_one_line(case, clip, tmp_path):
    args = ["--model", "msnet_effl0", "--source", str(clip), "--backends", "ort-fp32", "--work-dir", str(tmp_path)]
    if case == "size":
        args += ["--input-size", "100", "100"]
        want = "multiples of 32"
    elif case == "source":
        args[3] = str(tmp_path / "nope")
        want = "does not exist"
    elif case == "row":
        args[5] = "naive,ort-int9"  # refused before the naive loop spends minutes
        want = "unknown row 'ort-int9'"
    elif case == "streams":
        args[5] = "openvino-int8@two"
        want = "--streams must be 'auto' or a positive integer"
    else:
        args[5] = "naive,trt-fp16@2"
        want = "'trt-fp16@2': this row runs one stream"
    r = _bench(*args, timeout=300)
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert want in err[-1] and err[-1].startswith("error:"), r.stderr
    assert not any(line.startswith("Traceback") for line in err), r.stderr


def test_streams_option_leaves_tensorrt_rows_alone(clip, tmp_path):
    """--streams 2 is for the CPU rows: without a GPU the TensorRT row is skipped, the run still succeeds."""
    out = tmp_path / "b.json"
    r = _bench("--model", "msnet_effl0", "--input-size", "64", "64", "--source", str(clip), "--backends",
               "ort-fp32,trt-fp16", "--streams", "2", "--rounds", "2", "--pipeline-frames", "6", "--accuracy-frames",
               "4", "--work-dir", str(tmp_path / "w"), "--json", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [x["backend"] for x in rows] == ["ort-fp32"] and rows[0]["streams"] == 2
    assert "trt-fp16: skipped" in r.stderr


def test_runtime_bench_runs_model_files_without_torch(clip, tmp_path):
    """runtime.bench measures exported files on the runtime's backends and never imports torch (edge boxes)."""
    from export.onnx import export_onnx

    m = tmp_path / "m.onnx"
    export_onnx("msnet_effl0", m, precision="fp32", input_hw=(96, 128), progress=False, log=lambda *a: None)
    out = tmp_path / "r.json"
    code = ("import sys, runtime.bench as b\n"
            f"rc = b.main(['--onnx', {str(m)!r}, '--reference', {str(m)!r}, '--source', {str(clip)!r}, '--backends', "
            f"'ort,ort@2', '--rounds', '2', '--pipeline-frames', '6', '--json', {str(out)!r}])\n"
            "assert rc == 0 and 'torch' not in sys.modules and 'export' not in sys.modules, sorted(sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [x["streams"] for x in rows] == [1, 2] and all(x["fps"] > 0 for x in rows)
    assert rows[0]["dice_vs_torch"] == pytest.approx(1.0) and 0 <= rows[0]["dice_vs_gt"] <= 1


def test_latency_mode_honours_size_and_streams(tmp_path, data_dir):
    kv = data_dir / "kvasir-seg"
    out = tmp_path / "l.json"
    r = _bench("--models", "msnet_effl0", "--rows", "ort-fp32,ort-fp32@2", "--input-size", "64", "64", "--rounds",
               "2", "--warmup", "1", "--calib-data", str(kv), "--work-dir", str(tmp_path / "w"), "--json", str(out),
               timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x["row"] for x in json.loads(out.read_text())] == ["ort-fp32", "ort-fp32@2"]
    assert [p.name.split("-fp32-")[0] for p in (tmp_path / "w").glob("*.onnx")] == ["msnet_effl0-64x64"]
    bad = _bench("--models", "nosuch", "--rows", "ort-fp32", "--work-dir", str(tmp_path / "w"), timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: unknown model 'nosuch'"), bad.stderr


def test_runtime_bench_refuses_a_reference_of_another_size_up_front(clip, tmp_path):
    from export.onnx import export_onnx

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for p, hw in ((a, (64, 64)), (b, (96, 96))):
        export_onnx("msnet_effl0", p, precision="fp32", input_hw=hw, progress=False, log=lambda *x: None)
    r = subprocess.run([sys.executable, "-m", "runtime.bench", "--onnx", str(a), "--reference", str(b), "--source",
                        str(clip)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "give a reference exported at the same size" in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
