"""Fault injection: the real commands as subprocesses on real data, tried as a hostile-but-realistic user would —
a full disk (RLIMIT_FSIZE in the child: chmod does not stop root), destinations that are folders or lie under files,
frames of another size, damaged caches and manifests, two exports of one entry at once, signals mid-run and
mid-export, another working directory. Each case checks the exit status, the one-line message, that no traceback
was printed, and what is left on disk."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests.video_checks import decoded_frames, signal_and_wait

ROOT = Path(__file__).resolve().parents[2]


def _run(args, *, fsize: int | None = None, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit, cwd=cwd or ROOT, env={**os.environ, **(env or {})})


def _run_here(args, capfd) -> subprocess.CompletedProcess:
    """The command's ``main`` through the same CLI wrapper, in this process (argument and destination faults need no
    new interpreter: the exit status and the printed lines are the command's own)."""
    import importlib

    from common.cli import run

    main = importlib.import_module(args[0]).main
    old = signal.getsignal(signal.SIGTERM)
    capfd.readouterr()
    try:
        code = run(main, args[1:])
    finally:
        signal.signal(signal.SIGTERM, old)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _no_traceback(r) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]


def _one_error_line(r, *words) -> str:
    _no_traceback(r)
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]




# -- the video outputs -------------------------------------------------------------------------------------------------


def test_disk_full_during_the_demo_video_is_detected_and_reported(onnx_model, clip, tmp_path):
    out, rep = tmp_path / "x.mp4", tmp_path / "r.json"
    r = _run(["demos.live", "--source", str(clip), "--onnx", str(onnx_model), "--backend", "ort", "--out", str(out),
              "--report", str(rep), "--quiet"], fsize=150_000)
    _no_traceback(r)
    assert r.returncode == 1, r.stderr
    report = json.loads(rep.read_text())
    held = int(report["outputs"]["video_frames"])
    assert report["frames"] == 25 and held < 25 and "holds" in report["error"] and f"{held} of 25" in report["error"]
    assert not out.exists()  # never published under the name asked for
    assert not list(tmp_path.glob(".*partial*"))
    incomplete = tmp_path / "x.incomplete.mp4"
    assert (held > 0) == incomplete.exists()
    if held:
        assert decoded_frames(incomplete) == held  # what the report says the file holds is what it holds


def test_disk_full_in_runtime_video_is_one_line_and_leaves_nothing(clip, tmp_path):
    r = _run(["runtime.video", str(clip), str(tmp_path / "v.mp4")], fsize=100_000)
    _one_error_line(r, "holds", "of 25 frames")
    assert r.returncode == 1
    assert not (tmp_path / "v.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_frames_of_another_size_are_resized_not_dropped(onnx_model, clip, tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i, f in enumerate(sorted(clip.iterdir())[:8]):
        img = cv2.imread(str(f))
        if i in (2, 5):
            img = cv2.resize(img, (200, 150))
        cv2.imwrite(str(seq / f"{i:03d}.png"), img)
    out, rep = tmp_path / "o.mp4", tmp_path / "o.json"
    r = _run(["demos.live", "--source", str(seq), "--onnx", str(onnx_model), "--backend", "ort", "--out", str(out),
              "--report", str(rep), "--quiet"])
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["frames"] == 8 and report["outputs"]["video_resized_frames"] == "2"
    assert decoded_frames(out) == int(report["outputs"]["video_frames"]) == 8


@pytest.mark.parametrize("case", ["out-dir", "out-under-file", "report-dir", "report-under-file", "report-suffix"])
def test_bad_destinations_fail_first_in_one_line(case, onnx_model, clip, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "dir.json").mkdir()
    args = {"out-dir": ["--out", str(tmp_path / "dir.mp4")],
            "out-under-file": ["--out", str(tmp_path / "file" / "x.mp4")],
            "report-dir": ["--report", str(tmp_path / "dir.json")],
            "report-under-file": ["--report", str(tmp_path / "file" / "r.json")],
            "report-suffix": ["--report", str(tmp_path / "r.txt")]}[case]
    t0 = time.time()
    r = _run(["demos.live", "--source", str(clip), "--onnx", str(onnx_model), "--backend", "ort", *args])
    assert r.returncode == 1
    _one_error_line(r, "--out" if case.startswith("out") else "--report")
    assert time.time() - t0 < 30  # refused before the model is even opened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "dir.mp4", "file"]


# -- signals ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_finalises_the_video_and_the_report(sig, code, onnx_model, clip, tmp_path):
    out, rep = tmp_path / "x.mp4", tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "demos.live", "--source", str(clip), "--loop", "--onnx",
                          str(onnx_model), "--backend", "ort", "--out", str(out), "--report", str(rep), "--quiet"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a background job's children inherit SIGINT ignored (then Python installs no handler):
                         # the terminal's default, as a user pressing Ctrl-C has it
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while time.time() - t0 < 60 and not list(tmp_path.glob(".x.partial.mp4")):
        time.sleep(0.05)
    time.sleep(1.0)
    err = signal_and_wait(p, sig)
    assert "Traceback" not in err
    assert p.returncode == code, err
    report = json.loads(rep.read_text())
    assert report["ended_by"] == sig.name and report["frames"] > 25
    assert decoded_frames(out) == report["frames"] == int(report["outputs"]["video_frames"])


def test_sigterm_mid_export_leaves_no_temporary_file(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "export.onnx", "--model", "msnet_effl0", "--precision", "int8",
                          "--input-size", "96", "96", "--calib-count", "64", "--out", str(out / "m.onnx")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "TMPDIR": str(tmp)})
    seen = ""
    t0 = time.time()
    while time.time() - t0 < 240:  # until calibration runs: temporary graphs exist in out/ and in TMPDIR
        line = p.stdout.readline()
        seen += line
        if "[2/4]" in line or not line:
            break
    assert "[2/4]" in seen, seen
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    rest, _ = p.communicate(timeout=120)
    seen += rest
    assert p.returncode == 143, seen
    assert "Traceback" not in seen and "terminated (SIGTERM)" in seen
    # (.ses: a 51-byte session id a native library keeps in the temp folder on every run, complete exports too)
    assert list(out.iterdir()) == [] and [p.name for p in tmp.iterdir() if p.name != ".ses"] == []


# -- caches, manifests, concurrency, working directory ----------------------------------------------------------------


def _export_cached(cache: Path, *extra, cwd=None):
    return _run(["export.cache", "--model", "msnet_effl0", "--input-size", "64", "64", "--no-progress", *extra],
                env={"POLYPSEG_CACHE": str(cache)}, cwd=cwd)


def test_damaged_cache_entries_heal_with_a_notice(tmp_path):
    cache = tmp_path / "cache"
    r = _export_cached(cache, "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    onnx_path = Path(r.stdout.strip().splitlines()[-1])
    good = onnx_path.read_bytes()
    onnx_path.write_bytes(good[: len(good) // 3])  # truncated
    r = _export_cached(cache, "--precision", "fp32")
    assert r.returncode == 0 and "damaged or incomplete; exporting it again" in r.stderr, r.stderr
    assert onnx_path.read_bytes() == good or len(onnx_path.read_bytes()) == len(good)
    onnx_path.with_suffix("").with_suffix(".manifest.json").write_text("{ not json")
    r = _export_cached(cache, "--precision", "fp32")
    assert r.returncode == 0 and "exporting it again" in r.stderr
    _no_traceback(r)


def test_damaged_calibration_cache_is_named_and_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    r = _export_cached(cache, "--precision", "int8", "--calib-count", "8", "--int8-flavour", "qdq-s8",
                       "--no-parity-gate")
    assert r.returncode == 0, r.stderr
    (calib,) = (cache / "onnx" / ".calib-cache").glob("calib-*.json")
    calib.write_text(calib.read_text()[:1000])
    for p in (cache / "onnx").glob("*.onnx"):
        p.unlink()  # the graph must be rebuilt, so that the calibration cache is read again
    r = _export_cached(cache, "--precision", "int8", "--calib-count", "8", "--int8-flavour", "qdq-s8",
                       "--no-parity-gate")
    assert r.returncode == 0, r.stderr
    _no_traceback(r)
    warn = [x for x in r.stderr.splitlines() if x.startswith("warning: calibration cache")]
    assert len(warn) == 1 and calib.name in warn[0] and "calibrating again" in warn[0]
    assert json.loads(calib.read_text())  # rebuilt whole


def test_two_exports_of_one_entry_at_once_do_not_corrupt_it(tmp_path):
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "export.cache", "--model", "msnet_effl0", "--input-size", "64", "64",
            "--precision", "fp32", "--no-progress"]
    env = {**os.environ, "POLYPSEG_CACHE": str(cache)}
    ps = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    assert sum("first use" in o[1] for o in outs) == 1  # one exported, the other waited and reused it
    from runtime.manifest import Manifest, manifest_path, sha256_file

    path = Path(paths.pop())
    assert sha256_file(path) == Manifest.load(manifest_path(path)).onnx_sha256
    assert not [p for p in (cache / "onnx").iterdir() if p.name.startswith(".") and "calib" not in p.name]


def test_hand_edited_manifest_is_one_line_naming_the_field(onnx_model, clip, tmp_path):
    m = tmp_path / "m.onnx"
    shutil.copy(onnx_model, m)
    d = json.loads(onnx_model.with_suffix(".manifest.json").read_text())
    for field, value in (("input_hw", "96x96"), ("threshold", "0.5"), ("mean", [0.1]), ("plugins", {})):
        (tmp_path / "m.manifest.json").write_text(json.dumps({**d, field: value}))
        r = _run(["demos.live", "--source", str(clip), "--onnx", str(m), "--backend", "ort"])
        assert r.returncode == 1
        _one_error_line(r, "m.manifest.json", repr(field))


def test_default_export_works_from_another_working_directory(tmp_path):
    """The shipped checkpoint records its calibration data relative to the checkout: found from anywhere."""
    r = _export_cached(tmp_path / "cache", "--precision", "int8", "--calib-count", "8", "--no-parity-gate",
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "calibrating on 8 frames" in r.stderr


# -- bad values: one line, never a traceback ---------------------------------------------------------------------------


def test_bad_values_and_foreign_checkpoints_are_one_line(tmp_path, capfd):
    import torch

    shipped = ROOT / "training" / "weights" / "msnet_effl0-kvasir.pt"
    ck = torch.load(shipped, map_location="cpu", weights_only=False)
    ck["model_kwargs"] = {"bogus_arg": 3}  # written by another version of the toolkit, or edited
    torch.save(ck, tmp_path / "bogus.pt")
    (tmp_path / "run").mkdir()
    shutil.copy(shipped, tmp_path / "run" / "last.pt")  # a weights-only checkpoint where a resumable one belongs
    cases = [
        (["export.onnx", "--model", "msnet_effl0", "--precision", "int8", "--calib-count", "-5", "--out",
          str(tmp_path / "a.onnx")], "--calib-count"),
        (["export.onnx", "--model", "msnet_effl0", "--input-size", "0", "0", "--out", str(tmp_path / "a.onnx")],
         "input"),
        (["export.onnx", "--model", "msnet_effl0", "--precision", "int8", "--calib-split", str(tmp_path / "no.txt"),
          "--out", str(tmp_path / "a.onnx")], "no.txt"),
        (["export.onnx", "--model", "msnet_effl0", "--out", str(tmp_path)], "must end in .onnx"),
        (["export.onnx", "--model", "msnet_effl0", "--checkpoint", str(tmp_path / "bogus.pt"), "--out",
          str(tmp_path / "a.onnx")], "bogus_arg"),
        (["training.train", "--model", "msnet_effl0", "--data", str(ROOT.parent / "shared" / "data" / "kvasir-seg"),
          "--resume", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"], "cannot be resumed"),
    ]
    for args, what in cases:
        r = _run_here(args, capfd)
        assert r.returncode == 1, (args, r.stderr[-2000:])
        _one_error_line(r, what)
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.parametrize("cmd", ["evaluate", "compare", "profile", "bench", "clinical", "batch", "video", "onnx"])
def test_every_command_checks_its_destination_before_working(cmd, onnx_model, clip, tmp_path, capfd):
    """An output that is a folder (or lies under a file) is refused at once, in one line, for every command."""
    d, f = tmp_path / "dir.json", tmp_path / "file"
    d.mkdir()
    f.write_text("x")
    data = ROOT.parent / "shared" / "data"
    args = {
        "evaluate": ["training.evaluate", "--checkpoint", "msnet_effl0-kvasir", "--data", str(data / "kvasir-seg"),
                     "--json", str(d)],
        "compare": ["export.compare", "--model", "msnet_effl0", "--data", str(data / "kvasir-seg"), "--json", str(d)],
        "profile": ["runtime.profile", str(onnx_model), "--json", str(d)],
        "bench": ["runtime.bench", "--onnx", str(onnx_model), "--source", str(clip), "--json", str(d)],
        "clinical": ["export.clinical", "--sequences", str(clip.parent), "--json", str(d)],
        "batch": ["runtime.batch", str(clip), "--out", str(f / "out"), "--onnx", str(onnx_model)],
        "video": ["runtime.video", str(clip), str(f / "v.mp4")],
        "onnx": ["export.onnx", "--model", "msnet_effl0", "--out", str(f / "m.onnx")],
    }[cmd]
    t0 = time.time()
    r = _run_here(args, capfd)
    assert r.returncode == 1, r.stderr[-2000:]
    _one_error_line(r)
    assert time.time() - t0 < 30, "refused only after the work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "file"] and list(d.iterdir()) == []
