"""Tiled upscaling against one untiled call of the same net, side by side, and peak memory at two sizes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_upscale.py [--size 512] [--repeats 3]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_upscale.py --against OTHER.safetensors  (two nets' times)

The time ratio comes from one process running both sides on one loaded net and one image, taken
in turn (bench_common.interleaved), so drift on a shared machine hits them alike. Peak memory:
every case runs in a fresh process: it loads the net, resets the kernel's peak-RSS mark
(/proc/self/clear_refs), reads its RSS, upscales, and reports the peak (VmHWM) and what it ran (net file digest, input size,
scale, tile settings). The script fails loudly (SidesDiffer) if the two sides of the memory
comparison ran another net, size or scale, or if their results differ by more than the blend
zones allow. Peak memory is reported as the growth over the RSS
after loading, and again less the result array itself (H*s x W*s x 3 float32), which any
upscaler must hold: what tiling keeps flat is the rest.

malloc, side by side at each size (--heaps): "backend" is what the backend does (upscale_image runs
inside generator_backend/heap.flat_heap: mallopt(M_MMAP_THRESHOLD, 1 MiB) while it runs), "default" is
glibc untouched (flat_heap off), "env" is MALLOC_MMAP_THRESHOLD_=1048576 (the earlier benchmark's
setting, flat_heap then leaves it alone). The variable is removed from every other case's environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_common import SidesDiffer  # noqa: E402


def status_kib(field):
    """A field of /proc/self/status in bytes (VmRSS: now, VmHWM: the peak since the last reset)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {field}: this benchmark needs Linux")


def child(args):
    """One case, in this process: print a JSON line."""
    import contextlib

    import numpy as np
    import torch

    from generator_backend import heap
    from generator_backend import upscale as up
    from generator_backend.pocket_dataset import render
    from generator_backend.upscalers import POCKET_UPSCALER, load_descriptor

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    if args.heap == "backend" and heap._mallopt() is None:
        raise SystemExit("heap.flat_heap() does not apply here: not glibc, or MALLOC_MMAP_THRESHOLD_ is set")
    if args.heap != "backend":  # glibc as it is (default), or as the environment variable sets it (env)
        up.flat_heap = contextlib.nullcontext
    net = load_descriptor(POCKET_UPSCALER)
    image = np.tile(render("red", "bricks", 256, seed=1), (args.size // 256 + 1, args.size // 256 + 1, 1))
    image = np.ascontiguousarray(image[:args.size, :args.size])
    up.run_net(net, image[:32, :32])  # warm-up: first-call allocations are not the method's
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak: imports and loading are not the method's
        f.write("5")
    base = status_kib("VmRSS")
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = up.run_net(net, image) if args.tile == 0 else up.upscale_image(net, image, args.tile, args.overlap)
        times.append(time.perf_counter() - t)
        del out
    peak = status_kib("VmHWM")
    print(json.dumps({"net": hashlib.sha256(POCKET_UPSCALER.read_bytes()).hexdigest()[:16], "size": args.size,
                      "scale": int(net.scale), "tile": args.tile, "overlap": args.overlap, "heap": args.heap,
                      "seconds": sorted(times)[len(times) // 2], "base_rss": base, "peak_rss": peak,
                      "result_bytes": (args.size * int(net.scale)) ** 2 * 3 * 4}))


def timed_sides(size, tile, overlap, repeats):
    """Median seconds of tiled and untiled upscaling, interleaved in this process, and their largest difference."""
    import numpy as np
    import torch

    from benchmarks.bench_common import interleaved
    from generator_backend import upscale as up
    from generator_backend.pocket_dataset import render
    from generator_backend.upscalers import POCKET_UPSCALER, load_descriptor

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    net = load_descriptor(POCKET_UPSCALER)
    image = np.ascontiguousarray(np.tile(render("red", "bricks", 256, seed=1), (size // 256 + 1,) * 2 + (1,))[
        :size, :size])
    times = interleaved({"tiled": lambda: up.upscale_image(net, image, tile, overlap),
                         "untiled": lambda: up.run_net(net, image)}, repeats)
    difference = float(np.abs(up.upscale_image(net, image, tile, overlap) - up.run_net(net, image)).max())
    return times, difference


def timed_nets(size, tile, overlap, repeats, other: Path):
    """Median seconds of the shipped net and ``other`` upscaling one texture, tiled alike, interleaved."""
    import numpy as np
    import torch

    from benchmarks.bench_common import interleaved, require_same
    from generator_backend import upscale as up
    from generator_backend.pocket_dataset import render
    from generator_backend.upscalers import POCKET_UPSCALER, load_descriptor

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    nets = {"shipped": load_descriptor(POCKET_UPSCALER), other.name: load_descriptor(other)}
    require_same("scale", *(int(n.scale) for n in nets.values()))
    image = np.ascontiguousarray(np.tile(render("red", "bricks", 256, seed=1), (size // 256 + 1,) * 2 + (1,))[
        :size, :size])
    times = interleaved({name: (lambda n=n: up.upscale_image(n, image, tile, overlap)) for name, n in nets.items()},
                        repeats)
    print(f"x{int(nets['shipped'].scale)} of a {size}² texture, tile {tile}, overlap {overlap}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; median of {repeats}, interleaved")
    print("| net | file digest | parameters | time (s) |")
    print("|---|---|---|---|")
    for (name, net), path in zip(nets.items(), (POCKET_UPSCALER, other)):
        count = sum(p.numel() for p in net.model.parameters())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"| {name} | {digest} | {count} | {times[name]:.2f} |")


def run_case(size, tile, overlap, repeats, heap="backend"):
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--tile", str(tile), "--overlap", str(overlap),
           "--repeats", str(repeats), "--heap", heap]
    # By default glibc keeps freed tile-sized blocks on its heap, so RSS grows with the tiles; with a fixed
    # 1 MiB mmap threshold (the backend's, or the env var) they are mapped and unmapped one by one.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if heap == "env":
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600, env=env)
    if out.returncode:
        raise SystemExit(f"case {cmd} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n):
    return f"{n / 2**20:.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input side of the tiled/untiled comparison")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="512,1024", help="input sides of the tiled peak-memory comparison")
    parser.add_argument("--heaps", default="backend,default,env", help="malloc settings of the peak-memory cases")
    parser.add_argument("--heap", default="backend", help=argparse.SUPPRESS)
    parser.add_argument("--against", type=Path, help="time the shipped net against this upscaler file instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.against:
        return timed_nets(args.size, args.tile, args.overlap, args.repeats, args.against)
    times, difference = timed_sides(args.size, args.tile, args.overlap, args.repeats)
    if difference > 0.05:  # the blend zones' border effects of a trained net are far smaller
        raise SidesDiffer(f"tiled and untiled results differ by {difference}: not the same computation")
    tiled = run_case(args.size, args.tile, args.overlap, 1)
    untiled = run_case(args.size, 0, 0, 1)
    for key in ("net", "size", "scale"):
        if tiled[key] != untiled[key]:
            raise SidesDiffer(f"the sides differ in {key}: tiled {tiled[key]}, untiled {untiled[key]}")
    s = tiled["scale"]
    print(f"x{s} of a {args.size}² texture (pocket-x4 {tiled['net']}), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; times: median of {args.repeats}, interleaved; "
          f"largest difference tiled - untiled {difference:.4f}")
    print("| side | time (s) | peak RSS growth (MiB) | less the result (MiB) |")
    print("|---|---|---|---|")
    for name, r in (("tiled", tiled), ("untiled", untiled)):
        grow = r["peak_rss"] - r["base_rss"]
        print(f"| {name} (tile {r['tile']}, overlap {r['overlap']}) | {times[name]:.2f} | {mib(grow)} | "
              f"{mib(grow - r['result_bytes'])} |")
    print(f"time ratio tiled / untiled: {times['tiled'] / times['untiled']:.2f}")
    print()
    print("| input → output (tiled, tile %d) | malloc | time (s) | peak RSS growth (MiB) | less the result (MiB) |"
          % args.tile)
    print("|---|---|---|---|---|")
    for size in (int(v) for v in args.sizes.split(",")):
        for heap in args.heaps.split(","):
            r = run_case(size, args.tile, args.overlap, 1, heap)
            if (r["net"], r["size"], r["scale"], r["heap"]) != (tiled["net"], size, s, heap):
                raise SidesDiffer(f"the {heap} case at {size}² ran something else: {r}")
            grow = r["peak_rss"] - r["base_rss"]
            print(f"| {size}² → {size * s}² | {heap} | {r['seconds']:.1f} | {mib(grow)} | "
                  f"{mib(grow - r['result_bytes'])} |")


if __name__ == "__main__":
    main()
