"""Command line: `python -m generator_backend serve` (or `generator-backend serve`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from dream_addon import protocol



def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "dream"


def write_private(path: Path, text: str):
    """Write ``text`` to a file only the current user can read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def add_codec_commands(sub):
    """`compress IMAGE -o FILE` and `decompress FILE -o IMAGE`: the latent image codec."""
    from .latent_codec import BITS_RANGE, PALETTE_RANGE

    for name, help_text in (("compress", "store an image as a palettised latent (.dlat)"),
                            ("decompress", "decode a latent file (.dlat) to an image")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("input", type=Path)
        cmd.add_argument("-o", "--output", type=Path, required=True)
        cmd.add_argument("--model", default="",
                         help="model whose VAE codes the latent (compress: default pocket; decompress: the one "
                              "the file names)")
        cmd.add_argument("--models-dir", type=Path, default=None, help="where built-in models are built and cached")
        cmd.add_argument("--device", default="auto")
    compress, decompress = sub.choices["compress"], sub.choices["decompress"]
    compress.add_argument("--bits", type=int, default=8, help=f"bits per latent channel ({BITS_RANGE[0]}..{BITS_RANGE[1]})")
    compress.add_argument("--palette", type=int, default=256,
                          help=f"palette colours ({PALETTE_RANGE[0]}..{PALETTE_RANGE[1]}, or 0 for none)")
    compress.add_argument("--no-dither", action="store_true", help="nearest palette colour, no error diffusion")
    compress.add_argument("--seamless", default="", choices=["", "x", "y", "xy"],
                          help="axes along which the image tiles (kept tileable)")
    decompress.add_argument("--denoise-steps", type=int, default=0,
                            help="UNet steps that remove the quantisation noise (0: plain VAE decode)")


def run_codec(args) -> int:
    """Run `compress` or `decompress`; a bad file or setting is one line on stderr and exit 2."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import numpy as np
    from PIL import Image

    from . import latent_codec as lc
    from .models import ModelLoadError, ModelManager

    try:
        if args.command == "compress":
            image = np.asarray(Image.open(args.input).convert("RGB"), np.float32) / 255
            settings = lc.CodecSettings(args.bits, args.palette, not args.no_dither, args.seamless)
            settings.check()
            model = args.model or protocol.DEFAULT_MODEL
            components = ModelManager([model], device=args.device, models_dir=args.models_dir).get()
            data = lc.compress(components, image, settings, model=model)
            args.output.write_bytes(data)
            print(f"{args.output}: {len(data)} bytes ({image.shape[1]}x{image.shape[0]}, "
                  f"{8 * len(data) / (image.shape[0] * image.shape[1]):.3f} bits per pixel)")
        else:
            data = args.input.read_bytes()
            header, _ = lc.read_header(data)
            model = args.model or header["model"] or protocol.DEFAULT_MODEL
            components = ModelManager([model], device=args.device, models_dir=args.models_dir).get()
            image = lc.decompress(components, data, args.denoise_steps, model_name=model)
            Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(args.output)
            print(f"{args.output}: {image.shape[1]}x{image.shape[0]}")
    except (lc.CodecError, ModelLoadError, OSError) as exc:
        print(f"generator-backend {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="generator-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the backend server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback only by default)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback --host (anyone with the token can then run jobs)")
    serve.add_argument("--port", type=int, default=protocol.DEFAULT_PORT, help="TCP port; 0 picks a free one")
    serve.add_argument("--model", action="append", dest="models", metavar="[NAME=]SOURCE",
                       help="local diffusers folder, hub id, 'pocket' (the small offline texture model) or "
                            "'tiny' (the random test model); repeatable, the first is the default "
                            "(default: pocket)")
    serve.add_argument("--upscaler", action="append", dest="upscalers", metavar="[NAME=]FILE",
                       help="an upscaler file (.safetensors, or a weights-only .pth: ESRGAN, Real-ESRGAN, SwinIR, "
                            "HAT, DAT... detected by spandrel) or a folder of them; repeatable; the shipped "
                            "pocket-x4 is always served and is the default")
    serve.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    serve.add_argument("--output-dir", type=Path, default=default_data_dir() / "outputs",
                       help="where every result is written before it is sent")
    serve.add_argument("--models-dir", type=Path, default=None,
                       help="the models folder: its checkpoints (diffusers folders, .safetensors / .ckpt single "
                            "files), LoRAs, embeddings and upscalers are listed and served; built-in models are "
                            "built and cached there too")
    serve.add_argument("--model-type", action="append", default=[], metavar="NAME=FAMILY[/KIND]",
                       help="override what was detected of a models-folder checkpoint, e.g. mymodel=sd2-base "
                            "(families: sd1, sd2, sd2-base, sdxl; kinds: txt2img, inpaint, depth, upscaler)")
    serve.add_argument("--token-file", type=Path, default=default_data_dir() / "backend.token",
                       help=f"file the token is written to (mode 600); ${protocol.TOKEN_ENV} sets the token instead")
    serve.add_argument("--max-size", type=int, default=2048, help="largest width or height accepted (multiple of 8)")
    serve.add_argument("--preload", action="store_true", help="load the default model before accepting jobs")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--hello-timeout", type=float, default=10.0,
                       help="seconds a new connection has to send its whole hello")
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="stop when standard input closes: the add-on passes a pipe, so a backend it launched "
                            "never outlives it (even when it crashes)")
    add_memory_options(serve)
    add_codec_commands(sub)
    tiny = sub.add_parser("build-tiny-model", help="build the offline tiny model into a folder")
    tiny.add_argument("--out", type=Path, required=True)
    return parser


def stop_on_signals(server):
    """SIGTERM and SIGINT stop the server gracefully (a second one stops it at once)."""
    def handler(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        server.request_shutdown(f"received {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def stop_with_parent(server):
    """Stop when standard input reaches its end: the pipe of the process that launched us closed."""
    def watch():
        try:
            while sys.stdin.buffer.read1(4096):
                pass
        except (OSError, ValueError):
            pass
        server.request_shutdown("the launching process has gone (its pipe closed)")

    threading.Thread(target=watch, name="dream-parent-watch", daemon=True).start()


def remove_token_file(path: Path, token: str):
    """Remove the token file we wrote, unless another backend has written its own there since."""
    try:
        if path.read_text() == token:
            path.unlink()
    except OSError:
        pass


def serve_upscalers(specs, device):
    """The upscalers named on the command line, checked now: a file that cannot be served stops the start."""
    from .upscalers import UpscalerManager, parse_upscaler_specs

    return UpscalerManager(parse_upscaler_specs(specs), device=device)


def serve(args) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not args.allow_remote and not protocol.is_loopback(args.host):  # refused before torch is imported
        print(f"cannot start: refusing to listen on {args.host}: only loopback addresses are allowed unless "
              "--allow-remote is given", file=sys.stderr)
        return 2
    from .jobs import OutputUnwritable
    from .models import ModelLoadError, ModelManager
    from .server import Server

    log = logging.getLogger("generator_backend")
    if args.max_size % 8 or not 64 <= args.max_size <= 8192:
        print("--max-size must be a multiple of 8 in 64..8192", file=sys.stderr)
        return 2
    from .model_library import parse_override

    try:
        overrides = {name: (family, kind) for name, family, kind in map(parse_override, args.model_type)}
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    models = ModelManager(args.models or [protocol.DEFAULT_MODEL], device=args.device, models_dir=args.models_dir,
                          overrides=overrides, memory=memory_options(args))
    token = os.environ.get(protocol.TOKEN_ENV) or secrets.token_urlsafe(32)
    try:
        upscalers = serve_upscalers(args.upscalers, models.device)
        server = Server(models, args.output_dir, token, host=args.host, port=args.port,
                        allow_remote=args.allow_remote, max_size=args.max_size, hello_timeout=args.hello_timeout,
                        upscalers=upscalers)
    except OutputUnwritable as exc:
        log.error("cannot start: the output folder %s is not writable (%s); make it writable or choose another "
                  "with --output-dir", args.output_dir, exc)
        return 2
    except (ValueError, OSError) as exc:  # UpscalerError is a ValueError
        log.error("cannot start: %s", exc)
        return 2
    if args.preload:
        try:
            models.get()
        except ModelLoadError as exc:
            log.error("cannot start: %s", exc)
            server.listener.close()
            return 2
    token_file = None if os.environ.get(protocol.TOKEN_ENV) else args.token_file
    if token_file:
        write_private(token_file, token)
    stop_on_signals(server)
    if args.exit_with_parent:
        stop_with_parent(server)
    ready = {"host": server.host, "port": server.port, "pid": os.getpid(), "device": models.device,
             "token_file": str(token_file) if token_file else None, "output_dir": str(args.output_dir)}
    print(protocol.READY_PREFIX + json.dumps(ready), flush=True)
    try:
        server.serve_forever()
    finally:
        if token_file:
            remove_token_file(token_file, token)
    # Everything is saved and every thread joined or evicted: leave without the interpreter's
    # finalisation, during which torch's native threads once aborted the process after a
    # SIGTERM ("terminate called without an active exception", exit -6).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def add_memory_options(serve):
    """Memory and precision options of the loaded models (generator_backend/memory.py)."""
    serve.add_argument("--vae-tiling", action="store_true",
                       help="decode and encode large textures in tiles (bounded VAE memory; tiles blend at seams)")
    serve.add_argument("--vae-tile", type=int, default=512, help="tile side in pixels for --vae-tiling")
    serve.add_argument("--attention-slicing", action="store_true",
                       help="compute attention in slices: less memory, slower (default: PyTorch SDPA)")
    serve.add_argument("--no-vae-upcast", action="store_true",
                       help="run a force_upcast VAE (SDXL's) in fp16 too: less memory, may overflow to black")
    serve.add_argument("--text-encoders-on-cpu", action="store_true",
                       help="keep the text encoders on the CPU (they run once per job), saving device memory")


def memory_options(args):
    from .memory import MemoryOptions

    return MemoryOptions(vae_tiling=args.vae_tiling, vae_tile=args.vae_tile, attention_slicing=args.attention_slicing,
                         vae_upcast=not args.no_vae_upcast, text_encoders_on_cpu=args.text_encoders_on_cpu)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args)
    if args.command in ("compress", "decompress"):
        return run_codec(args)
    from .tiny_model import build_tiny_model

    print(build_tiny_model(args.out))
    return 0
