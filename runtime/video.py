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
from common.io import check_destination

from .errors import RuntimeInputError

# FFmpeg writes its own warnings ("moov atom not found") to stderr; our errors say it in one line instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2  # noqa: E402

__all__ = ["Source", "SourceError", "VideoWriteError", "VideoWriter", "count_frames", "make_video", "open_source"]

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


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv")


def count_frames(path: str | os.PathLike[str]) -> int:
    """Frames a video file really holds (the container's count, else decoded one by one; 0 when unreadable)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n > 0:
            return n
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


class VideoWriteError(UserError, OSError):
    """The written video does not hold every frame (disk full, file-size limit, a failing encoder)."""


class VideoWriter:
    """Writes frames to a video that is published only when complete.

    Frames go to a temporary file beside the destination; a frame whose size differs from the first is resized to
    the stream's size (counted in :attr:`resized`), never dropped. :meth:`close` re-reads the file: when it holds
    every frame written it is renamed over the destination; otherwise it is kept as ``<name>.incomplete<suffix>``
    (when it holds any frame: a recording is not thrown away) or removed, and :class:`VideoWriteError` says how many
    frames it really holds.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise RuntimeInputError(f"{str(self.path)!r}: a video must end in {', '.join(VIDEO_SUFFIXES)}")
        why = check_destination(self.path)
        if why:
            raise RuntimeInputError(why)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps if fps and 0 < fps < 1000 else 25.0
        self.size: tuple[int, int] | None = None
        self._w = None
        self.frames = 0
        self.resized = 0
        self.held = 0

    def write(self, frame: np.ndarray) -> None:
        if self._w is None:
            self.size = (frame.shape[1], frame.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            self._w = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, self.size)
            if not self._w.isOpened():
                self._w = None
                raise VideoWriteError(f"cannot write video {self.path}: the encoder did not open")
        elif (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
            self.resized += 1
        self._w.write(frame)
        self.frames += 1

    def abort(self) -> None:
        """Stop and remove the temporary file (nothing is published)."""
        if self._w is not None:
            self._w.release()
            self._w = None
        self.tmp.unlink(missing_ok=True)

    def close(self) -> Path | None:
        """Finish, verify and publish; returns the video's path (None when no frame was written)."""
        if self._w is None:
            self.tmp.unlink(missing_ok=True)
            return None
        self._w.release()
        self._w = None
        self.held = count_frames(self.tmp)
        if self.held == self.frames:
            try:
                with open(self.tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(self.tmp, self.path)
            except OSError:
                self.tmp.unlink(missing_ok=True)
                raise
            return self.path
        kept = ""
        if self.held > 0:
            keep = self.path.with_name(f"{self.path.stem}.incomplete{self.path.suffix}")
            os.replace(self.tmp, keep)
            kept = f"; what it holds is kept as {keep.name}"
        else:
            self.tmp.unlink(missing_ok=True)
        raise VideoWriteError(f"the video {self.path.name} holds {self.held} of {self.frames} frames (the disk is "
                              f"full, a file-size limit was hit or the encoder failed){kept}")


def make_video(frames_dir: str | os.PathLike[str], out: str | os.PathLike[str], fps: float = 25.0,
               repeat: int = 1) -> Path:
    """Write the images of ``frames_dir`` (repeated ``repeat`` times) into a video (for benchmarks and tests);
    the file is verified before it is published."""
    src = FolderSource(Path(frames_dir))
    if repeat < 1 or not fps > 0:
        raise RuntimeInputError(f"--repeat must be >= 1 and --fps > 0, got {repeat} and {fps}")
    w = VideoWriter(out, fps)
    try:
        for _ in range(repeat):
            for f in src.files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    raise RuntimeInputError(f"cannot decode frame {f.name} in {frames_dir}")
                w.write(img)
    except BaseException:
        w.abort()
        raise
    path = w.close()
    if w.resized:
        import warnings

        warnings.warn(f"{w.resized} frame(s) of another size were resized to {w.size[0]}x{w.size[1]}", stacklevel=2)
    return path


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
