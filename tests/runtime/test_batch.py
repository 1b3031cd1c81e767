"""runtime.batch on real clips: per-video results, resume/skip, corrupt files, worker deaths (local processes and Ray
actors killed mid-video), signals, and the same results from both executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.batch import discover_sources, main, output_names, run_batch
from runtime.batch_job import BatchSettings, find_segments, mask_rle, result_identity
from runtime.errors import RuntimeInputError
from runtime.video import make_video
from tests.video_checks import decoded_frames, signal_and_wait

CLIPS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cvc-clinicdb-clips"
pytestmark = pytest.mark.skipif(not CLIPS.is_dir(), reason="needs ../shared/data/cvc-clinicdb-clips")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three mp4s made from the CVC clips (seq08 twice as long), a frame folder, and a corrupt mp4."""
    d = tmp_path_factory.mktemp("archive")
    for seq, rep in (("seq01", 1), ("seq08", 2), ("seq19", 1)):
        make_video(CLIPS / seq / "images", d / f"{seq}.mp4", fps=25, repeat=rep)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    return d




def _rle_decode(counts: list[int], h: int, w: int) -> np.ndarray:
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        flat[pos:pos + c] = val
        pos, val = pos + c, not val
    return flat.reshape((w, h)).T


# -- units ------------------------------------------------------------------------------------------------------------


def test_segments_hysteresis_merge_and_min_length():
    s = BatchSettings(enter=0.5, exit=0.3, merge_gap_s=0.2, min_len_s=0.12, folder_fps=25)
    p = np.zeros(100)
    p[10:20] = 0.9          # a segment ...
    p[20:23] = 0.4          # ... held by hysteresis (0.3 <= p < 0.5)
    p[23:26] = 0.1          # a 3-frame gap (0.12 s <= 0.2 s): merged with the next
    p[26:30] = 0.8
    p[60:62] = 0.95         # 2 frames = 0.08 s < 0.12 s: dropped
    p[80:90] = 0.6
    p[85] = 0.99
    area = np.full(100, 0.1)
    segs = find_segments(p, area, 25.0, s)
    assert [(g["start_frame"], g["end_frame"]) for g in segs] == [(10, 29), (80, 89)]
    assert segs[1]["peak_frame"] == 85 and segs[1]["peak_prob"] == 0.99
    assert segs[0]["start_s"] == 0.4 and segs[0]["end_s"] == 1.2
    assert find_segments(np.full(5, 0.2), np.zeros(5), 25.0, s) == []
    with pytest.raises(RuntimeInputError, match="exit <= enter"):
        BatchSettings(enter=0.3, exit=0.5).check()


def test_mask_rle_round_trip():
    rng = np.random.default_rng(0)
    for m in (rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        counts = mask_rle(m)
        assert sum(counts) == m.size
        np.testing.assert_array_equal(_rle_decode(counts, *m.shape), m)


def test_discovery_folders_globs_lists_and_names(archive, tmp_path):
    vids = discover_sources([str(archive)])
    assert [p.name for p in vids] == ["broken.mp4", "seq01.mp4", "seq08.mp4", "seq19.mp4"]
    # the CVC layout: seqXX/images is a frame folder, named after seqXX
    folders = discover_sources([str(CLIPS)])
    assert [p.parent.name for p in folders] == ["seq01", "seq08", "seq19"] and all(p.name == "images" for p in folders)
    assert output_names(folders) == ["seq01", "seq08", "seq19"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two videos\n{archive / 'seq01.mp4'}\n\n{archive}/seq1*.mp4\n{CLIPS / 'seq08'}\n")
    got = discover_sources([str(lst), str(archive / "seq01.mp4")])  # duplicates once
    assert [p.name for p in got] == ["seq01.mp4", "seq19.mp4", "images"]
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "clip.mp4").write_bytes(b"x")
    names = output_names(discover_sources([str(a), str(b)]))
    assert names[0] != names[1] and all(n.startswith("clip-") for n in names)
    with pytest.raises(RuntimeInputError, match="does not exist"):
        discover_sources([str(tmp_path / "nope")])
    with pytest.raises(RuntimeInputError, match="single image"):
        discover_sources([str(next((CLIPS / "seq01" / "images").iterdir()))])
    with pytest.raises(RuntimeInputError, match="matches nothing"):
        discover_sources([str(tmp_path / "*.avi")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeInputError, match="holds no video"):
        discover_sources([str(tmp_path / "empty")])


# -- the job on real clips --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model256(tmp_path_factory):
    """The shipped edge model at its native 256×256 (FP32): accurate enough to find the polyps of every clip. The
    fault tests use the small 96×96 ``onnx_model`` (faster)."""
    import warnings

    from export.onnx import export_onnx

    path = tmp_path_factory.mktemp("m256") / "effl0-256.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx("msnet_effl0", path, progress=False, log=lambda *a: None)
    return path


@pytest.fixture(scope="module")
def local_run(archive, model256, tmp_path_factory):
    """The whole archive (3 videos, a corrupt one, a frame folder) with video and PNG masks, 2 local workers."""
    out = tmp_path_factory.mktemp("out")
    rc = main([str(archive), str(CLIPS / "seq19"), "--out", str(out), "--onnx", str(model256), "--backend", "ort",
               "--workers", "2", "--video", "--masks", "png", "--no-progress"])
    return out, rc


def test_local_job_results_are_complete_and_verified(local_run, archive):
    out, rc = local_run
    assert rc == 2  # the corrupt file failed, the others went on
    job = json.loads((out / "job.json").read_text())
    assert (job["processed"], job["failed"], job["skipped"], job["pending"]) == (5, 1, 0, 0)
    broken = json.loads((out / "broken.json").read_text())
    assert broken["status"] == "failed" and "broken.mp4" in broken["error"]
    results = {}
    for path in out.glob("*.json"):
        r = json.loads(path.read_text())
        if path.name != "job.json" and r["status"] == "ok":
            results[r["source"]] = r
    expected = {str(archive / "seq01.mp4"): 25, str(archive / "seq08.mp4"): 52, str(archive / "seq19.mp4"): 25,
                str((CLIPS / "seq19" / "images").resolve()): 25}
    assert {k: r["frames"] for k, r in results.items()} == expected
    # seq19.mp4 and the seq19 frame folder share a stem: each gets a short hash of its path
    assert sorted(r["name"][:6] for r in results.values()) == ["seq01", "seq08", "seq19-", "seq19-"]
    for r in results.values():
        frames = r["frames"]
        assert len(r["timeline"]["prob"]) == len(r["timeline"]["area"]) == frames
        assert all(0.0 <= p <= 1.0 for p in r["timeline"]["prob"])
        # every CVC frame shows a polyp: the trained model finds one segment covering most of the clip
        assert r["segments"] and r["polyp_seconds"] >= 0.8 * r["duration_s"]
        video = out / r["outputs"]["video"]["file"]
        assert decoded_frames(video) == frames == r["outputs"]["video"]["frames"]
        with zipfile.ZipFile(out / r["outputs"]["masks"]["file"]) as z:
            names = z.namelist()
            assert len(names) == frames
            m = cv2.imdecode(np.frombuffer(z.read(names[0]), np.uint8), cv2.IMREAD_GRAYSCALE)
            assert m.shape == tuple(r["frame_size"]) and set(np.unique(m)) <= {0, 255}
            # the mask's foreground fraction agrees with the timeline's area (network vs frame resolution)
            assert abs((m > 0).mean() - r["timeline"]["area"][0]) < 0.05
    # the frame folder and the mp4 of the same clip give nearly the same timeline (mp4v re-encoding)
    a = results[str(archive / "seq19.mp4")]["timeline"]["prob"]
    b = results[str((CLIPS / "seq19" / "images").resolve())]["timeline"]["prob"]
    assert np.mean(np.abs(np.subtract(a, b))) < 0.1
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and rows[0].startswith("name,status")
    assert (out / "summary.png").stat().st_size > 10_000
    assert not any((out / ".partial").iterdir())


def test_rerun_skips_what_is_done_and_redoes_what_changed(local_run, archive, model256):
    out, _ = local_run
    args = [str(archive), str(CLIPS / "seq19"), "--out", str(out), "--onnx", str(model256), "--backend", "ort",
            "--workers", "1", "--video", "--masks", "png", "--no-progress"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("seq*.json")}
    assert main(args) == 2  # the corrupt file is retried (and fails again); the rest is skipped
    job = json.loads((out / "job.json").read_text())
    assert (job["processed"], job["skipped"], job["failed"]) == (1, 4, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("seq*.json")} == before
    # a damaged output is noticed (size) and only that video is redone
    vid = out / "seq01.mp4"
    vid.write_bytes(vid.read_bytes()[:1000])
    main(args)
    job = json.loads((out / "job.json").read_text())
    assert job["processed"] == 2 and job["skipped"] == 3
    assert decoded_frames(vid) == 25
    # other settings: another key, everything redone
    main(args[:-1] + ["--enter", "0.6", "--no-progress"])
    assert json.loads((out / "job.json").read_text())["processed"] == 5


def test_rle_masks_match_png_masks(archive, model256, tmp_path, local_run):
    out, _ = local_run
    job = run_batch([str(archive / "seq01.mp4")], tmp_path, model256, backend="ort", workers=1,
                    settings=BatchSettings(masks="rle"), log=lambda m: None)
    assert job["processed"] == 1 and job["failed"] == 0
    rle = json.loads((tmp_path / "seq01.masks.json").read_text())
    h, w = rle["size"]
    with zipfile.ZipFile(out / "seq01.masks.zip") as z:
        for i, counts in enumerate(rle["counts"][:5]):
            png = cv2.imdecode(np.frombuffer(z.read(f"frame_{i:06d}.png"), np.uint8), cv2.IMREAD_GRAYSCALE) > 0
            np.testing.assert_array_equal(_rle_decode(counts, h, w), png)


def _kill_when_running(out: Path, name: str, min_bytes: int, killed: list, timeout: float = 120) -> threading.Thread:
    """Kill (SIGKILL) the worker process running ``name`` once its partial annotated video holds ``min_bytes``."""
    def watch():
        t0 = time.time()
        while time.time() - t0 < timeout:
            for m in (out / ".partial").glob(f"{name}.*.running"):
                pid = int(m.name.rsplit(".", 2)[1])
                part = [p for p in (out / ".partial").glob(f"{name}.{pid}.*.mp4")]
                if part and part[0].stat().st_size >= min_bytes:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


@pytest.fixture(scope="module")
def long_video(archive):
    return make_video(CLIPS / "seq01" / "images", archive.parent / "long" / "long.mp4", fps=25, repeat=24)


def test_local_worker_killed_mid_video_is_retried(long_video, archive, onnx_model, tmp_path):
    killed: list[int] = []
    th = _kill_when_running(tmp_path, "long", 300_000, killed)
    job = run_batch([str(long_video), str(archive / "seq19.mp4")], tmp_path, onnx_model, backend="ort", workers=2,
                    threads=1, settings=BatchSettings(video=True), log=lambda m: None)
    th.join(1)
    assert killed, "the worker was not caught mid-video"
    r = json.loads((tmp_path / "long.json").read_text())
    assert r["status"] == "ok" and r["frames"] == 600
    assert int(r["timing"]["worker"].rsplit(":", 1)[1]) != killed[0]
    assert decoded_frames(tmp_path / "long.mp4") == 600
    assert job["failed"] == 0 and not any((tmp_path / ".partial").iterdir())


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from runtime.batch_ray import connect

    connect("", cpus=2)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_results(ray_cluster, local_run, archive, model256, tmp_path):
    out, _ = local_run
    settings = BatchSettings(**json.loads((out / "seq01.json").read_text())["settings"])  # as the last local run
    job = run_batch([str(archive), str(CLIPS / "seq19")], tmp_path, model256, backend="ort", workers=2, threads=1,
                    settings=settings, ray_address="auto", log=lambda m: None)
    assert job["executor"] == "ray" and job["processed"] == 5 and job["failed"] == 1
    compared = 0
    for p in sorted(out.glob("*.json")):
        if p.name == "job.json":
            continue
        a, b = json.loads(p.read_text()), json.loads((tmp_path / p.name).read_text())
        assert a["status"] == b["status"], p.name
        if a["status"] == "ok":
            assert result_identity(a) == result_identity(b), p.name  # outputs' sha256 included
            compared += 1
    assert compared == 4
    # rerun on Ray: everything done is skipped (the corrupt file is tried again)
    job = run_batch([str(archive), str(CLIPS / "seq19")], tmp_path, model256, backend="ort", workers=2, threads=1,
                    settings=settings, ray_address="auto", log=lambda m: None)
    assert (job["processed"], job["skipped"]) == (1, 4)


def test_ray_actor_killed_mid_video_is_retried_exactly_once(ray_cluster, long_video, onnx_model, tmp_path):
    killed: list[int] = []
    th = _kill_when_running(tmp_path, "long", 300_000, killed)
    job = run_batch([str(long_video)], tmp_path, onnx_model, backend="ort", workers=1, threads=1,
                    settings=BatchSettings(video=True), ray_address="auto", log=lambda m: None)
    th.join(1)
    assert killed, "the actor was not caught mid-video"
    assert job["failed"] == 0 and job["processed"] == 1
    r = json.loads((tmp_path / "long.json").read_text())
    assert r["status"] == "ok" and r["frames"] == 600
    assert int(r["timing"]["worker"].rsplit(":", 1)[1]) != killed[0]  # a restarted actor did it
    assert decoded_frames(tmp_path / "long.mp4") == 600
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "job.json", "long.json", "long.mp4", "summary.csv", "summary.png"]
    assert not any((tmp_path / ".partial").iterdir())


# -- the command ------------------------------------------------------------------------------------------------------


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "runtime.batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_job_keeps_a_consistent_state(sig, code, long_video, archive, onnx_model, tmp_path):
    p = _cli(str(archive / "seq01.mp4"), str(long_video), "--out", str(tmp_path), "--onnx", str(onnx_model),
             "--backend", "ort", "--workers", "1", "--video", "--no-progress")
    t0 = time.time()
    while time.time() - t0 < 120 and not list((tmp_path / ".partial").glob("long.*.mp4")):
        time.sleep(0.02)
    time.sleep(0.3)
    err = signal_and_wait(p, sig)
    assert p.returncode == code, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["stopped_by"] == sig.name and job["pending"] == 1
    assert json.loads((tmp_path / "seq01.json").read_text())["status"] == "ok"
    assert not (tmp_path / "long.json").exists() and not (tmp_path / "long.mp4").exists()
    assert not any((tmp_path / ".partial").iterdir())
    p = _cli(str(archive / "seq01.mp4"), str(long_video), "--out", str(tmp_path), "--onnx", str(onnx_model),
             "--backend", "ort", "--workers", "1", "--video", "--no-progress")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "1 skipped" in err and json.loads((tmp_path / "long.json").read_text())["frames"] == 600


def test_bad_input_is_one_line(archive, onnx_model, tmp_path):
    base = ["--onnx", str(onnx_model), "--no-progress"]
    (tmp_path / "file").write_text("x")
    cases = [
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "o")] + base, "does not exist"),
        ([str(archive), "--out", str(tmp_path / "file" / "o")] + base, "--out"),
        ([str(archive), "--out", str(tmp_path / "o"), "--enter", "0.2", "--exit", "0.4"] + base, "exit <= enter"),
        ([str(archive), "--out", str(tmp_path / "o"), "--onnx", str(tmp_path / "file")], "manifest"),
    ]
    for args, what in cases:
        p = _cli(*args)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and what in lines[0], err


def test_one_job_per_output_folder(archive, onnx_model, tmp_path, long_video):
    p = _cli(str(long_video), "--out", str(tmp_path), "--onnx", str(onnx_model), "--backend", "ort", "--workers", "1",
             "--no-progress")
    t0 = time.time()
    while time.time() - t0 < 60 and not list((tmp_path / ".partial").glob("*.running")):
        time.sleep(0.02)
    q = _cli(str(archive / "seq01.mp4"), "--out", str(tmp_path), "--onnx", str(onnx_model), "--no-progress")
    _, err = q.communicate(timeout=60)
    signal_and_wait(p, signal.SIGINT)
    assert q.returncode == 1 and "another runtime.batch job" in err


def test_ray_engine_workers_need_gpu_nodes(ray_cluster, onnx_model, tmp_path):
    """TensorRT engines run on GPU actors: the options ask Ray for a GPU, and a cluster without one is refused with
    one line before any actor starts (this machine's cluster has none)."""
    from runtime.batch_job import VideoTask
    from runtime.batch_ray import RayExecutor

    ex = RayExecutor("auto", onnx_model, "trt", workers=1, threads=1)
    assert ex.actor_options()["num_gpus"] == 1 and ex.actor_options()["max_restarts"] > 0
    task = VideoTask(str(tmp_path / "x.mp4"), "x", "0" * 64, "k")
    with pytest.raises(RuntimeInputError, match="no GPU"):
        ex.run([task], str(tmp_path), BatchSettings(), lambda t, r: None)
    assert RayExecutor("auto", onnx_model, "ort", 2, 1).actor_options()["num_gpus"] == 0


def test_frames_of_another_size_are_resized_and_counted_and_parquet(onnx_model, tmp_path):
    pa = pytest.importorskip("pyarrow.parquet")
    seq = tmp_path / "mixed"
    seq.mkdir()
    files = sorted((CLIPS / "seq01" / "images").iterdir())[:6]
    for i, f in enumerate(files):
        img = cv2.imread(str(f))
        if i == 3:
            img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2))
        cv2.imwrite(str(seq / f"{i:03d}.png"), img)
    job = run_batch([str(seq)], tmp_path / "out", onnx_model, backend="ort", workers=1, parquet=True,
                    settings=BatchSettings(video=True), log=lambda m: None)
    assert job["failed"] == 0
    r = json.loads((tmp_path / "out" / "mixed.json").read_text())
    assert r["frames"] == 6 and r["resized_frames"] == 1 and r["fps"] == 25.0
    assert decoded_frames(tmp_path / "out" / "mixed.mp4") == 6
    table = pa.read_table(tmp_path / "out" / "summary.parquet")
    assert table.num_rows == 1 and table.column("frames").to_pylist() == [6]
