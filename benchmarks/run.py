"""Command line of the benchmark suite: runs the cases, prints the targets'
verdicts, writes results.md, results.json and the plots.

    python -m benchmarks            # the full run (about twelve minutes on 2 cores)
    python -m benchmarks --quick    # a subset, about 90 s (to results/quick)
    python -m benchmarks --replot   # results.md and plots again from results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import sysconfig
import time
from typing import Any, Dict, List

import fastshm

from . import aio, cfloor, channels, crossproc, gil, inproc, queues, report
from .names import Names, iceoryx2_entries, sweep_new_iceoryx2
from .timing import Progress

KIB, MIB = 1024, 1024 * 1024
ALL_SIZES = [8, 64, KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB]

# How much of each case a run does.  The full run is sized for 2 cores and a
# few GiB of memory: the largest message lives in about ten buffers at once.
CONFIGS: Dict[str, Dict[str, Any]] = {
    "quick": {
        "copy_sizes": [8, 64, KIB, 64 * KIB, MIB, 64 * MIB],
        "batch_ns": 1e6,
        "repeats": 7,
        "open_batch_ns": 2e6,
        "open_repeats": 5,
        "rt_sizes": [64, MIB],
        "rt_block_s": 0.02,
        "rt_blocks": 3,
        "ow_plan": [(64 * KIB, 1)],
        "ow_seconds": 0.3,
        "ow_repeats": 1,
        "frames_seconds": 1.0,
        "idle_seconds": 1.0,
        "gil_sizes": [4 * KIB, 64 * KIB, MIB],
        "gil_seconds": 0.1,
        "gil_repeats": 1,
        # (size, producers, consumers, how the consumers take)
        "queue_plan": [
            (64, 1, 1, "get"),
            (64, 1, 1, "get_many"),
            (64, 4, 4, "get"),
            (4 * KIB, 1, 1, "get"),
        ],
        "queue_seconds": 0.3,
        "queue_repeats": 1,
        "queue_rt_sizes": [64],
        "queue_rt_block_s": 0.02,
        "queue_rt_blocks": 3,
        # The channel cases (channels.py): seconds of each stream run, and so on.
        "chan_seconds": 1.0,
        "chan_repeats": 1,
        "chan_frames_seconds": 1.0,
        "chan_frames_repeats": 1,
        "chan_cffi": False,  # the channel's cffi route in C1-C3 too (C4, C5 always)
        "chan_rt_sizes": [64],
        "chan_rt_block_s": 0.02,
        "chan_rt_blocks": 3,
        "chan_idle_seconds": 2.0,
        "chan_sample_count": 30,
        # The asyncio cases (aio.py): tasks awaiting at once and how long
        # they are watched idle, wake-ups and their pause, ping-pong runs.
        "aio_tasks": 1000,
        "aio_settle_s": 0.5,
        "aio_idle_seconds": 1.0,
        "aio_wake_count": 200,
        "aio_wake_block": 50,
        "aio_wake_pause_s": 0.002,
        "aio_pp_seconds": 0.5,
        "aio_pp_repeats": 1,
    },
    "full": {
        "copy_sizes": ALL_SIZES,
        "batch_ns": 4e6,
        "repeats": 31,
        "open_batch_ns": 5e6,
        "open_repeats": 21,
        "rt_sizes": ALL_SIZES,
        "rt_block_s": 0.06,
        "rt_blocks": 12,
        "ow_plan": [(s, 1) for s in ALL_SIZES]
        + [(s, n) for n in (2, 4) for s in (64, 64 * KIB, MIB)],
        "ow_seconds": 0.5,
        "ow_repeats": 3,
        "frames_seconds": 3.0,
        "idle_seconds": 1.5,
        "gil_sizes": [4 * KIB, 16 * KIB, 32 * KIB, 64 * KIB, 256 * KIB, MIB],
        "gil_seconds": 0.3,
        "gil_repeats": 3,
        "queue_plan": [
            (s, p, c, how)
            for s in (64, 4 * KIB)
            for p, c, how in ((1, 1, "get"), (1, 1, "get_many"), (4, 4, "get"))
        ],
        "queue_seconds": 1.0,
        "queue_repeats": 3,
        "queue_rt_sizes": [64, 4 * KIB],
        "queue_rt_block_s": 0.06,
        "queue_rt_blocks": 12,
        "chan_seconds": 2.0,
        "chan_repeats": 5,  # large messages vary with the memory traffic of the moment
        # C1 compares runs of one repeat, paired: more and shorter runs see
        # more of the machine's moods (the vCPUs' placement moves the copy
        # rate of a frame by up to 4x within seconds).
        "chan_frames_seconds": 1.5,
        "chan_frames_repeats": 9,
        "chan_cffi": True,
        "chan_rt_sizes": [64],
        "chan_rt_block_s": 0.06,
        "chan_rt_blocks": 12,
        "chan_idle_seconds": 2.0,
        "chan_sample_count": 200,
        "aio_tasks": 1000,
        "aio_settle_s": 0.5,
        "aio_idle_seconds": 3.0,
        "aio_wake_count": 2000,
        "aio_wake_block": 100,
        "aio_wake_pause_s": 0.002,
        "aio_pp_seconds": 1.0,
        "aio_pp_repeats": 5,
    },
}


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    try:
        from fastshm import _build

        extra = " ".join(_build._ARGS)
    except Exception:
        extra = "?"
    cflags = f"{sysconfig.get_config_var('CC')} {sysconfig.get_config_var('CFLAGS')} {extra}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "fastshm": fastshm.__version__,
        "backend": fastshm.backend,
        "binding": getattr(fastshm, "binding", "?"),
        "features": sorted(fastshm.features),
        "cflags": cflags.strip(),
    }


def _replot(out: str) -> int:
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    meta, rows = saved["meta"], saved["results"]
    verdicts = report.targets(rows)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(report.markdown(meta, rows, verdicts))
    m = meta["machine"]
    report.plots(rows, out, f"{m['cpu']}, {m['cores']} cores, {m['python']}")
    return 0


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="a subset that runs in about 90 s")
    ap.add_argument(
        "--out",
        default=None,
        help="directory for results.md, results.json and the plots (default: "
        "benchmarks/results, or benchmarks/results/quick for --quick, so a quick run "
        "never overwrites a full one)",
    )
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument(
        "--replot",
        action="store_true",
        help="rewrite results.md and the plots from the results.json in --out, without running",
    )
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(os.path.dirname(__file__), "results")
        if args.quick:
            args.out = os.path.join(args.out, "quick")
    if args.replot:
        return _replot(args.out)
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("the plots need matplotlib: pip install matplotlib (or pass --no-plots)")
    # A terminated run still unwinds, so the sweep below removes its segments.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    mode = "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    os.makedirs(args.out, exist_ok=True)

    steps = (
        4 * len(cfg["copy_sizes"])
        + 3
        + len(cfg["rt_sizes"])
        + len(cfg["ow_plan"])
        + len(crossproc.FRAMES) * len(crossproc.FRAME_MODES)
        + 2
        + len(cfg["queue_plan"])
        + len(cfg["queue_rt_sizes"])
        + channels.steps(cfg["chan_rt_sizes"])
        + aio.steps()
    )
    progress = Progress(steps)
    names = Names()
    meta: Dict[str, Any] = {
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "config": cfg,
    }
    # The C floors are compiled now, once; without a compiler they are n/a.
    meta["c_floors"] = (
        f"compiled with `{cfloor.compiler_line()}`"
        if cfloor.load() is not None
        else f"n/a: {cfloor.why()}"
    )
    meta["c_queue_floor"] = (
        "compiled with the C core's " + ", ".join(cfloor.QUEUE_CORE)
        if cfloor.load_queue() is not None
        else f"n/a: {cfloor.queue_why()}"
    )
    meta["queue_skipped"] = queues.skipped()
    meta["channel_skipped"] = channels.skipped()
    meta["aio_skipped"] = aio.skipped()
    meta["aio_sleeps_in"] = aio.sleeps_in()
    meta["aio_uvloop"] = aio.uvloop_version()
    m = meta["machine"]
    sys.stderr.write(
        f"fastshm benchmarks ({mode}) on {m['cpu']}, {m['cores']} cores, "
        f"{m['python']}, backend {m['backend']}\n"
    )
    # Other work on the machine shows in every figure across processes:
    # the load average before and after says how quiet it was.
    meta["loadavg_before"] = os.getloadavg()
    t0 = time.monotonic()
    rows: List[Dict[str, Any]] = []
    iox_before = iceoryx2_entries()
    try:
        rows += inproc.copy_path(
            names, cfg["copy_sizes"], cfg["batch_ns"], cfg["repeats"], progress
        )
        rows += inproc.open_costs(names, cfg["open_batch_ns"], cfg["open_repeats"], progress)
        rows += crossproc.round_trip(
            names, cfg["rt_sizes"], cfg["rt_block_s"], cfg["rt_blocks"], progress
        )
        rows += crossproc.one_way(
            names, cfg["ow_plan"], cfg["ow_seconds"], cfg["ow_repeats"], progress
        )
        rows += crossproc.idle_wait(names, cfg["idle_seconds"], progress)
        rows += crossproc.frames(names, cfg["frames_seconds"], progress)
        rows += queues.throughput(
            names,
            [tuple(x) for x in cfg["queue_plan"]],
            cfg["queue_seconds"],
            cfg["queue_repeats"],
            progress,
        )
        rows += queues.round_trip(
            names,
            cfg["queue_rt_sizes"],
            cfg["queue_rt_block_s"],
            cfg["queue_rt_blocks"],
            progress,
        )
        rows += channels.run(names, cfg, progress)
        rows += aio.run(names, cfg, progress)
        rows += gil.gil(names, cfg["gil_sizes"], cfg["gil_seconds"], cfg["gil_repeats"], progress)
    finally:
        left = names.sweep(quiet=False)
        meta["iceoryx2_files_removed"] = sweep_new_iceoryx2(iox_before)
        cfloor.cleanup()
    meta["duration_s"] = time.monotonic() - t0
    meta["loadavg_after"] = os.getloadavg()
    meta["leftover_segments"] = left

    verdicts = report.targets(rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report.markdown(meta, rows, verdicts))
    report.write_json(os.path.join(args.out, "results.json"), meta, rows, verdicts)
    made: List[str] = []
    if not args.no_plots:
        title = f"{m['cpu']}, {m['cores']} cores, {m['python']}"
        made = report.plots(rows, args.out, title)

    print(
        f"\nfastshm benchmarks ({mode}, {meta['duration_s']:.0f} s) on {m['cpu']}, "
        f"{m['cores']} cores, {m['python']}"
    )
    for v in verdicts:
        state = (
            "info   " if v.get("info")
            else "n/a    " if v["met"] is None
            else "met    " if v["met"]
            else "NOT MET"
        )
        print(f"  {v['id']:<3} {state}  {v['value']}")
    print(
        f"written: {args.out}/results.md, results.json"
        + (", " + ", ".join(os.path.basename(p) for p in made) if made else "")
    )
    if left:
        print(f"warning: segments were left in /dev/shm and removed: {left}", file=sys.stderr)
    return 0
