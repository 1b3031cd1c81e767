"""Video sources: camera index, stream URL (live: latest frame wins), video file or frame folder (every frame, in
order). A source that fails mid-stream raises :class:`SourceError`, which the pipeline turns into a clean stop."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from common.cli import entry
from common.errors import UserError

from .errors import RuntimeInputError

# FFmpeg writes its own warnings ("moov atom not found") to stderr; our errors say it in one line instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2  # noqa: E402

__all__ = ["Source", "SourceError", "open_source"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", re.I)


class SourceError(UserError, RuntimeError):
    """The source failed mid-stream (unplugged camera, corrupt file, stream cut)."""


class Source:
    """Iterates BGR uint8 frames. ``live`` sources are sampled (latest frame wins); others are read in order."""

    live = False
    name = ""
    fps = 0.0

    def read(self) -> np.ndarray | None:
        """The next frame, ``None`` at the end; raises :class:`SourceError` on failure."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderSource(Source):
    def __init__(self, folder: Path, loop: bool = False) -> None:
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise RuntimeInputError(f"frame folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTS)})")
        self.name, self.loop, self.i, self.fps = str(folder), loop, 0, 25.0

    def read(self) -> np.ndarray | None:
        if self.i >= len(self.files):
            if not self.loop:
                return None
            self.i = 0
        path = self.files[self.i]
        self.i += 1
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SourceError(f"cannot decode frame {path.name} in {self.name}")
        return frame


class CaptureSource(Source):
    """OpenCV ``VideoCapture`` over a file, a camera index or a stream URL."""

    def __init__(self, spec: str | int, live: bool, loop: bool = False) -> None:
        self.spec, self.live, self.loop = spec, live, loop
        self.name = f"camera {spec}" if isinstance(spec, int) else str(spec)
        self.cap = cv2.VideoCapture(spec)
        if not self.cap.isOpened():
            what = "camera" if isinstance(spec, int) else ("stream" if live else "video file")
            raise RuntimeInputError(f"cannot open {what} {self.name!r}: not found, not connected or not decodable")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frames = 0
        self.total = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not live else 0

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if ok and frame is not None:
            self.frames += 1
            return frame
        if self.live:
            raise SourceError(f"{self.name}: no frame after {self.frames} frames (disconnected or stream cut)")
        if self.total and self.frames < self.total:
            raise SourceError(f"{self.name}: decoding failed at frame {self.frames + 1} of {self.total} (corrupt file)")
        if self.frames == 0:
            raise SourceError(f"{self.name}: no decodable frame (corrupt or empty video)")
        if self.loop:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.total, self.frames = 0, 0
            return self.read()
        return None

    def close(self) -> None:
        self.cap.release()


def open_source(spec: str | int, loop: bool = False) -> Source:
    """Open ``spec``: a camera index (``0``), a stream URL, a video file or a folder of frames."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CaptureSource(int(spec), live=True)
    if _URL.match(str(spec)):
        return CaptureSource(str(spec), live=True)
    p = Path(spec)
    if p.is_dir():
        return FolderSource(p, loop)
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(16)
        if not head:
            raise RuntimeInputError(f"video file {str(p)!r} is empty")
        if p.suffix.lower() in IMAGE_EXTS:
            raise RuntimeInputError(f"{str(p)!r} is a single image: pass its folder to read frames")
        return CaptureSource(str(p), live=False, loop=loop)
    raise RuntimeInputError(
        f"source {str(spec)!r} does not exist: pass a camera index, a video file, a frame folder or a stream URL"
    )


def make_video(frames_dir: str | os.PathLike[str], out: str | os.PathLike[str], fps: float = 25.0, repeat: int = 1) -> Path:
    """Write the images of ``frames_dir`` (repeated ``repeat`` times) into an MP4 (for benchmarks and tests)."""
    src = FolderSource(Path(frames_dir))
    first = cv2.imread(str(src.files[0]))
    h, w = first.shape[:2]
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeInputError(f"cannot create {str(out.parent)!r}: {e.strerror or e}") from None
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    wr = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not wr.isOpened():
        raise RuntimeInputError(f"cannot write video {out}")
    for _ in range(repeat):
        for f in src.files:
            wr.write(cv2.imread(str(f)))
    wr.release()
    os.replace(tmp, out)
    return out


def now() -> float:
    return time.perf_counter()


def main(argv=None) -> int:
    """``python -m runtime.video FRAMES_DIR OUT.mp4 [--repeat N] [--fps F]``: make a test video from frames."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m runtime.video", description="Make an MP4 from a folder of frames")
    p.add_argument("frames")
    p.add_argument("out")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--fps", type=float, default=25.0)
    a = p.parse_args(argv)
    print(make_video(a.frames, a.out, a.fps, a.repeat))
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
