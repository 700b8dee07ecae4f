"""Walk and mosaic-zoom frames to GIF (Pillow), MP4 (PyAV) or a PNG sequence, with an optional rubber band."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def rubber_band(frames: list) -> list:
    """Forward, then backward without repeating either end: 2n − 2 frames that loop smoothly."""
    return frames + frames[-2:0:-1]


def write_sequence(out: Path, frames: list) -> Path:
    """A folder of numbered PNG frames (frame_000001.png, ...), replacing an earlier export whole."""
    from .jobs import _private_dir

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _private_dir(tmp)
    for k, frame in enumerate(frames, 1):
        path = tmp / f"frame_{k:06d}.png"
        frame.save(path)
        path.chmod(0o600)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def export_frames(folder: Path, fmt: str, fps: int, bounce: bool, stem: str = "walk"):
    """Write <stem>.gif, <stem>.mp4 or the folder <stem>_png from the folder's frame files; return (path,
    frame count)."""
    paths = sorted(Path(folder).glob("frame_*.png"))
    frames = [Image.open(p).convert("RGB") for p in paths]
    if bounce:
        frames = rubber_band(frames)
    name = f"{stem}{'_bounce' if bounce else ''}"
    if fmt == "png":
        return write_sequence(Path(folder) / f"{name}_png", frames), len(frames)
    out = Path(folder) / f"{name}.{fmt}"
    tmp = out.with_name(out.name + ".tmp." + fmt)
    if fmt == "gif":
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                       loop=0)
    else:
        import av

        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames[0].width, frames[0].height  # multiples of 8: even, as yuv420p needs
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    tmp.chmod(0o600)  # like every result: the user's alone
    tmp.replace(out)
    return out, len(frames)
