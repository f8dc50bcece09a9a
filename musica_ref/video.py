"""Frames of a video, for tracking: a folder of image files (in name order; always available) or a video file
(through PyAV, the optional `video` extra: pip install "musica-ref[video]", FFmpeg inside its wheel)."""
from __future__ import annotations

import os

from .errors import InputError, MusicaError
from .io import as_rgb, load_image

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


class VideoUnavailable(MusicaError):
    """Reading a video file needs the `video` extra (PyAV), which is not installed."""


VIDEO_HINT = ('reading a video file needs PyAV: pip install "musica-ref[video]" (or pip install av); '
              'or give a folder of frames')


def frame_count(path) -> int | None:
    """How many frames `path` holds (a folder's image files; a video's count if its header says), else None."""
    if os.path.isdir(path):
        return len(frame_files(path))
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(os.fspath(path)) as c:
            n = c.streams.video[0].frames if c.streams.video else 0
        return n or None
    except Exception:
        return None


def frame_files(folder) -> list[str]:
    """The frames of a folder: its image files, in name order."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(FRAME_SUFFIXES) and os.path.isfile(os.path.join(folder, f)))


def read_frames(path, fps: float = 30.0, max_frames: int | None = None):
    """Yield (index, time in seconds, (H, W, 3) uint8 RGB frame). A folder's frames are timed index / fps; a
    video's by its own time stamps (index / fps where it has none)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = frame_files(path)
        if not files:
            raise InputError(f"folder {path!r} holds no frames ({', '.join(FRAME_SUFFIXES)})")
        for k, f in enumerate(files[:max_frames]):
            yield k, k / fps, load_image(f)
        return
    if not os.path.isfile(path):
        raise InputError(f"{path!r} does not exist (give a video file or a folder of frames)")
    try:
        import av
    except ImportError:
        raise VideoUnavailable(VIDEO_HINT) from None
    try:
        container = av.open(path)
    except Exception as exc:
        raise InputError(f"{path!r} could not be opened as a video: {exc}") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path!r} holds no video stream")
        k = 0
        try:
            for frame in container.decode(video=0):
                if max_frames is not None and k >= max_frames:
                    break
                t = frame.time if frame.time is not None else k / fps
                yield k, float(t), as_rgb(frame.to_ndarray(format="rgb24"))
                k += 1
        except av.error.FFmpegError as exc:
            raise InputError(f"{path!r}: frame {k} could not be decoded: {exc}") from None
        if k == 0:
            raise InputError(f"{path!r} holds no frames")
