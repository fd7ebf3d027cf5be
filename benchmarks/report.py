"""Targets, the markdown table, the JSON file and the plots."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

KIB, MIB = 1024, 1024 * 1024
COLORS = {
    "native": "#d62728",
    "native-cffi": "#e377c2",
    "python": "#1f77b4",
    "stdlib": "#2ca02c",
    "posix_ipc": "#98df8a",
    "SharedMemory": "#ff9896",
    "mmap": "#9467bd",
    "memcpy": "#7f7f7f",
    "memcpy-c": "#000000",
    "memcpy-2slot": "#bcbd22",
    "slice": "#000000",
    "native-bare": "#ff9896",
    "c-syscalls": "#000000",
    "c-spin": "#000000",
    "c-spin-yield": "#555555",
    "stdlib-poll": "#2ca02c",
    "iceoryx2": "#aec7e8",
    "pipe": "#ff7f0e",
    "queue": "#8c564b",
    "socket": "#17becf",
    "faster-fifo": "#bcbd22",
    "simplequeue": "#c49c94",
    "c-queue": "#000000",
}

# The floor each table's "× of the floor" column divides by.
FLOORS = {
    ("copy", "store"): "memcpy",
    ("copy", "load"): "memcpy",
    ("copy", "load_into"): "memcpy",
    ("copy", "view"): "slice",
    ("open", None): "c-syscalls",
    ("round trip", None): "c-spin",
    ("queue round trip", None): "c-spin",
    ("queue", None): "c-queue",
    ("channel round trip", None): "c-spin",
}
# T10: a consumer keeps level when it takes this share of the producer's
# rate and finds the queue full in at most this share of the looks.
LEVEL_RATE = 0.95
LEVEL_FULL = 0.05
# Where two floors are measured, the faster one at each size is the floor.
FLOOR_ALTERNATIVES = {"c-spin": ("c-spin", "c-spin-yield")}


def floor_label(case: str, op: str) -> Optional[str]:
    return FLOORS.get((case, op), FLOORS.get((case, None)))


def human_size(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} B"


def human_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def _find(rows: List[Dict[str, Any]], **kw: Any) -> Optional[Dict[str, Any]]:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _med(rows: List[Dict[str, Any]], **kw: Any) -> Optional[float]:
    r = _find(rows, **kw)
    return None if r is None else r["median_ns"]


# ---- targets ----


def _pair(rows: List[Dict[str, Any]], c: str, size: int = 64) -> Optional[float]:
    """A store and a load of ``size`` bytes by contender ``c``."""
    st = _med(rows, case="copy", op="store", contender=c, size=size)
    lo = _med(rows, case="copy", op="load", contender=c, size=size)
    if c == "native-bare":  # no bytes-making load: its load_into
        lo = _med(rows, case="copy", op="load_into", contender=c, size=size)
    return st + lo if st is not None and lo is not None else None


def _verdict(
    tid: str, goal: str, met: Optional[bool], value: str, detail: str = "", **extra: Any
) -> Dict[str, Any]:
    return {"id": tid, "goal": goal, "met": met, "value": value, "detail": detail, **extra}


def _idle(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    return {r["contender"]: r["core_percent"] for r in rows if r["case"] == "idle wait"}


def targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each target's verdict and the numbers it rests on, from this run.  A
    target whose contenders were not measured (a package or the compiler
    missing, or a size not in this run) has ``met`` None."""
    out = []
    idle = _idle(rows)

    # T1: 64 B store + load against the stdlib and posix_ipc by hand.
    pair = {
        c: _pair(rows, c)
        for c in ("native", "native-cffi", "native-bare", "python", "stdlib", "posix_ipc", "mmap")
    }
    nat, std, pix = pair["native"], pair["stdlib"], pair["posix_ipc"]
    goal = "64 B store+load via Segment: >= 2x faster than stdlib framing, faster than posix_ipc"
    if nat and std:
        met: Optional[bool] = std / nat >= 2 and (pix is None or pix / nat > 1)
        if pix is None:
            met = None if std / nat >= 2 else False
        value = f"{std / nat:.2f}x vs stdlib" + (
            f", {pix / nat:.2f}x vs posix_ipc" if pix else ", posix_ipc n/a"
        )
        detail = ", ".join(f"{c} {human_ns(v)}" for c, v in pair.items() if v)
        out.append(_verdict("T1", goal, met, value, "pairs: " + detail, pair_ns=pair))
    else:
        out.append(_verdict("T1", goal, None, "n/a (64 B not measured)"))

    # T2: view of a 64 B message against slicing the stdlib's buf.
    goal = "view() of a 64 B message: <= 2x the cost of slicing the stdlib's buf"
    v = _med(rows, case="copy", op="view", contender="native", size=64)
    sl = _med(rows, case="copy", op="view", contender="slice", size=64)
    if v and sl:
        out.append(
            _verdict(
                "T2",
                goal,
                v / sl <= 2,
                f"{v / sl:.2f}x ({human_ns(v)} against {human_ns(sl)})",
                "stdlib's framed view (length read + slice): "
                + human_ns(_med(rows, case="copy", op="view", contender="stdlib", size=64) or 0),
            )
        )
    else:
        out.append(_verdict("T2", goal, None, "n/a"))

    # T3: load and load_into against the copy floor, 64 KiB and 1 MiB up.
    goal = (
        "64 KiB load / load_into >= 0.9x bytes(buf[a:b]) / a memoryview slice copy; "
        ">= 0.95x from 1 MiB up"
    )
    checks: List[Tuple[str, int, float, float]] = []
    for size in sorted({r["size"] for r in rows if r["case"] == "copy"}):
        if size != 64 * KIB and size < MIB:
            continue
        need = 0.9 if size < MIB else 0.95
        for op in ("load", "load_into"):
            n = _med(rows, case="copy", op=op, contender="native", size=size)
            f = _med(rows, case="copy", op=op, contender="memcpy", size=size)
            if n and f:
                checks.append((op, size, f / n, need))
    if checks:
        worst = min(checks, key=lambda c: c[2] / c[3])
        out.append(
            _verdict(
                "T3",
                goal,
                all(r >= need for _, _, r, need in checks),
                f"worst {worst[0]} at {human_size(worst[1])}: {worst[2]:.2f}x (need {worst[3]}x)",
                "; ".join(f"{op} {human_size(sz)} {r:.2f}x" for op, sz, r, _ in checks),
                ratios=[list(c) for c in checks],
            )
        )
    else:
        out.append(_verdict("T3", goal, None, "n/a"))

    # T4: 64 B round trip against Pipe; a blocked wait() stays idle.
    goal = (
        "64 B round trip >= 30x faster than multiprocessing.Pipe; blocked wait() < 1% of a "
        "core on each native binding"
    )
    nat = _med(rows, case="round trip", contender="native", size=64)
    pipe = _med(rows, case="round trip", contender="pipe", size=64)
    if nat and pipe:
        # Per binding of the C core; the python backend's figure is shown too.
        native_idle = [p for c, p in idle.items() if c.startswith("native")]
        idle_ok = bool(native_idle) and all(p < 1 for p in native_idle)
        detail = f"native {human_ns(nat)}, pipe {human_ns(pipe)}"
        for c in ("native-cffi", "iceoryx2", "stdlib-poll", "c-spin", "c-spin-yield"):
            t = _med(rows, case="round trip", contender=c, size=64)
            if t:
                detail += f", {c} {human_ns(t)}"
        detail += "; idle wait(): " + (
            ", ".join(f"{c} {p:.2f}% of a core" for c, p in idle.items()) or "not measured"
        )
        out.append(
            _verdict(
                "T4",
                goal,
                pipe / nat >= 30 and idle_ok,
                f"{pipe / nat:.1f}x; idle " + ", ".join(f"{c} {p:.2f}%" for c, p in idle.items()),
                detail,
            )
        )
    else:
        out.append(_verdict("T4", goal, None, "n/a"))

    # T5: 1 MiB round trip against iceoryx2's busy-poll.
    goal = "1 MiB round trip no slower than iceoryx2's Python busy-poll; idle wait() < 1% of a core"
    nat = _med(rows, case="round trip", contender="native", size=MIB)
    iox = _med(rows, case="round trip", contender="iceoryx2", size=MIB)
    if nat and iox:
        ok = nat <= iox and idle.get("native", 100.0) < 1
        detail = f"native {human_ns(nat)}, iceoryx2 {human_ns(iox)}"
        for c in ("native-cffi", "stdlib-poll", "pipe", "c-spin", "c-spin-yield"):
            t = _med(rows, case="round trip", contender=c, size=MIB)
            if t:
                detail += f", {c} {human_ns(t)}"
        out.append(
            _verdict(
                "T5",
                goal,
                ok,
                f"native takes {nat / iox:.3f}x iceoryx2's time ({human_ns(nat)} "
                f"against {human_ns(iox)}); idle {idle.get('native', float('nan')):.2f}%",
                detail,
            )
        )
    else:
        out.append(_verdict("T5", goal, None, "n/a (iceoryx2 or 1 MiB not measured)"))

    # T6: attach + close against the C floor of the same system calls.
    goal = "attach+close (Segment and SharedMemory) <= 1.3x the C floor of the same system calls"
    fl = _med(rows, case="open", op="attach+close", contender="c-syscalls")
    seg = _med(rows, case="open", op="attach+close", contender="native")
    shm = _med(rows, case="open", op="attach+close", contender="SharedMemory")
    if fl and seg and shm:
        detail = f"C floor {human_ns(fl)}, Segment {human_ns(seg)}, SharedMemory {human_ns(shm)}"
        for c in ("native-cffi", "posix_ipc", "stdlib", "mmap"):
            t = _med(rows, case="open", op="attach+close", contender=c)
            if t:
                detail += f", {c} {human_ns(t)} ({t / fl:.2f}x)"
        out.append(
            _verdict(
                "T6",
                goal,
                seg / fl <= 1.3 and shm / fl <= 1.3,
                f"Segment {seg / fl:.2f}x, SharedMemory {shm / fl:.2f}x",
                detail,
            )
        )
    else:
        out.append(_verdict("T6", goal, None, "n/a (no C compiler)" if not fl else "n/a"))

    # T7: view at the smallest and largest size.
    views = sorted(
        (r["size"], r["median_ns"])
        for r in rows
        if r["case"] == "copy" and r["op"] == "view" and r["contender"] == "native"
    )
    if len(views) >= 2:
        (s0, t0), (s1, t1) = views[0], views[-1]
        ratio = max(t0, t1) / min(t0, t1)
        out.append(
            _verdict(
                "T7",
                "view() time at the smallest and largest size within 2x",
                ratio <= 2,
                f"{ratio:.2f}x ({human_size(s0)} {human_ns(t0)}, {human_size(s1)} {human_ns(t1)})",
            )
        )
    out += queue_targets(rows)
    from .report_channels import channel_targets

    out += channel_targets(rows)
    from .report_aio import aio_targets

    out += aio_targets(rows)
    return out


def _qrow(rows: List[Dict[str, Any]], c: str, size: int, n: int, how: str) -> Any:
    return _find(rows, case="queue", contender=c, size=size, producers=n, consumers=n, consumer=how)


def queue_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """T8-T10, the queue's targets, from this run's queue cases."""
    out = []

    # T8: 64 B one producer to one consumer, against faster-fifo and mp.Queue.
    goal = (
        "64 B one-to-one throughput (put / get): >= 10x faster-fifo and >= 10x "
        "multiprocessing.Queue"
    )
    nat = _qrow(rows, "native", 64, 1, "get")
    ff = _qrow(rows, "faster-fifo", 64, 1, "get")
    mq = _qrow(rows, "queue", 64, 1, "get")
    if nat and mq:
        r_ff = nat["msgs_per_s"] / max(ff["msgs_per_s"], 1e-9) if ff else None
        r_mq = nat["msgs_per_s"] / max(mq["msgs_per_s"], 1e-9)
        met: Optional[bool] = r_mq >= 10 and (r_ff is None or r_ff >= 10)
        if r_ff is None and met:
            met = None  # half of it could not be measured
        value = (f"{r_ff:.1f}x vs faster-fifo" if r_ff else "faster-fifo n/a") + (
            f", {r_mq:.1f}x vs multiprocessing.Queue"
        )
        detail = "messages/s: " + ", ".join(
            f"{r['contender']} {r['msgs_per_s']:,.0f}"
            + (" (get_many)" if how == "get_many" else "")
            for how in ("get", "get_many")
            for r in rows
            if r["case"] == "queue"
            and r["size"] == 64
            and r["producers"] == 1
            and r["consumers"] == 1
            and r["consumer"] == how
        )
        out.append(_verdict("T8", goal, met, value, detail))
    else:
        out.append(_verdict("T8", goal, None, "n/a (fastshm.Queue or 64 B not measured)"))

    # T9: 64 B round trip through two queues, against a Pipe's.
    goal = "64 B round trip through two queues >= 20x faster than multiprocessing.Pipe"
    nat = _med(rows, case="queue round trip", contender="native", size=64)
    pipe = _med(rows, case="queue round trip", contender="pipe", size=64)
    if nat and pipe:
        detail = f"native {human_ns(nat)}, pipe {human_ns(pipe)}"
        for c in ("native-cffi", "python", "faster-fifo", "simplequeue", "queue", "c-spin"):
            t = _med(rows, case="queue round trip", contender=c, size=64)
            if t:
                detail += f", {c} {human_ns(t)}"
        out.append(
            _verdict(
                "T9",
                goal,
                pipe / nat >= 20,
                f"{pipe / nat:.1f}x ({human_ns(nat)} against {human_ns(pipe)})",
                detail,
            )
        )
    else:
        out.append(_verdict("T9", goal, None, "n/a (fastshm.Queue or 64 B not measured)"))

    # T10: a get_many consumer keeps level with a producer that puts as fast
    # as it can.  A bounded queue holds a fast producer back to its
    # consumer's pace, so matching rates alone would prove nothing: the queue
    # must also have had room nearly every time it was looked at.
    goal = (
        f"get_many keeps one consumer level with one producer putting as fast as it can: "
        f"it takes >= {LEVEL_RATE}x the messages/s the producer puts, and the queue is "
        f"found full in <= {100 * LEVEL_FULL:.0f}% of the looks every 2 ms (native, each size)"
    )
    checks = []
    for r in rows:
        if (
            r["case"] == "queue"
            and r["contender"] == "native"
            and r["consumer"] == "get_many"
            and r["producers"] == 1
            and r["consumers"] == 1
        ):
            level = r["msgs_per_s"] / max(r["put_msgs_per_s"], 1e-9)
            full = r["full_share"] if r["full_share"] is not None else 1.0
            checks.append((r["size"], level, full, level >= LEVEL_RATE and full <= LEVEL_FULL))
    if checks:
        value = "; ".join(
            f"{human_size(sz)}: {lv:.3f}x, full {100 * fu:.1f}%" for sz, lv, fu, _ in checks
        )
        detail = "put and taken messages/s, full share: " + "; ".join(
            f"{r['contender']} ({r['consumer']}) {human_size(r['size'])} "
            f"{r['put_msgs_per_s']:,.0f} / {r['msgs_per_s']:,.0f}, "
            + ("n/a" if r["full_share"] is None else f"{100 * r['full_share']:.1f}%")
            for r in rows
            if r["case"] == "queue"
            and r["producers"] == 1
            and r["consumers"] == 1
            and r["contender"] in ("native", "faster-fifo")
        )
        out.append(_verdict("T10", goal, all(c[3] for c in checks), value, detail))
    else:
        out.append(_verdict("T10", goal, None, "n/a (native get_many not measured)"))
    return out


# ---- markdown ----


def _table(header: List[str], body: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _contenders(rows: List[Dict[str, Any]]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        if r["contender"] not in seen:
            seen.append(r["contender"])
    return seen


def _times(r: Dict[str, Any], floor: Optional[Dict[str, Any]]) -> List[str]:
    """Median, IQR and "× of the floor" cells of one row."""
    cells = [human_ns(r["median_ns"]), f"{human_ns(r['q1_ns'])}–{human_ns(r['q3_ns'])}"]
    if "throughput_GBps" in r:
        cells.append(f"{r['throughput_GBps']:.2f}")
    cells.append(_times_floor(r["median_ns"], floor))
    return cells


def _times_floor(ns: float, floor: Optional[Dict[str, Any]]) -> str:
    if floor is None or not floor.get("median_ns"):
        return "n/a"
    return f"{ns / floor['median_ns']:.2f}×"


def _long_table(
    sub: List[Dict[str, Any]], floor_c: Optional[str], keys: Tuple[str, ...], gbps: bool
) -> List[str]:
    """One row per (key, contender): median, IQR, (GB/s), × of the floor."""
    header = ["size" if keys == ("size",) else keys[0], "contender", "median", "IQR"]
    if gbps:
        header.append("GB/s")
    header.append(f"× of the floor ({floor_c or 'n/a'})")
    body = []
    groups = []
    for r in sub:
        g = tuple(r[k] for k in keys)
        if g not in groups:
            groups.append(g)
    if keys == ("size",):
        groups.sort()
    for g in groups:
        rs = [r for r in sub if tuple(r[k] for k in keys) == g]
        alts = FLOOR_ALTERNATIVES.get(floor_c or "", (floor_c,))
        floors = [r for r in rs if r["contender"] in alts]
        floor = min(floors, key=lambda r: r["median_ns"]) if floors else None
        for r in rs:
            first = human_size(g[0]) if keys == ("size",) else str(g[0])
            body.append([first, r["contender"]] + _times(r, floor))
    return _table(header, body)


def markdown(
    meta: Dict[str, Any], rows: List[Dict[str, Any]], verdicts: List[Dict[str, Any]]
) -> str:
    m = meta["machine"]
    out = [
        "# fastshm benchmark results",
        "",
        f"Run: `{meta['command']}` ({meta['mode']}), {meta['date']}, {meta['duration_s']:.0f} s.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB; {m['os']}; "
        f"Python {m['python']}; fastshm {m['fastshm']} (default backend `{m['backend']}`, "
        f"binding `{m.get('binding', '?')}`, compiled with `{m['cflags']}`). "
        f"C floors: {meta.get('c_floors', 'n/a')}.",
        "",
        "Load average (1, 5, 15 min) before the run "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_before"])
        + "; after "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_after"])
        + ". On two cores, other work competes with the cases across processes.",
        "",
        "Figures are medians over interleaved repetitions; the spread is in results.json "
        "(min, max, quartiles). Every table shows each figure beside its floor, measured "
        'in the same run: "× of the floor" is how many times the floor\'s time a '
        "contender takes (for rates, how many times fewer it delivers).",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "goal", "verdict", "measured"],
        [
            [
                v["id"],
                v["goal"],
                "info" if v.get("info")
                else "n/a" if v["met"] is None
                else "**met**" if v["met"]
                else "**not met**",
                v["value"],
            ]
            for v in verdicts
        ],
    )
    for v in verdicts:
        if v.get("detail"):
            out.append(f"\n{v['id']}: {v['detail']}")

    copy = [r for r in rows if r["case"] == "copy"]
    if copy:
        out += [
            "",
            "## Copy path, one process (time per call)",
            "",
            "`memcpy` is slice assignment between two ready buffers; for `load` it is "
            "`bytes(memoryview)`, making a new bytes object of that size: the floor of "
            "each copy made from Python. `memcpy-c` is C's memcpy between the same "
            "sizes looping in C: the copy with no interpreter at all. `slice` (view) "
            "is slicing the stdlib's `buf` at a known length. `native-bare` is the C "
            "core's `fshm_store` / `fshm_load` called straight through cffi with every "
            "argument ready. `memcpy-2slot` copies into two buffers in turn, as a store "
            "alternates between the two slots. `posix_ipc` is measured at 64 B.",
            "",
        ]
        for op in ("store", "load", "load_into", "view"):
            sub = [r for r in copy if r["op"] == op]
            if sub:
                out += [f"### {op}", ""]
                out += _long_table(sub, floor_label("copy", op), ("size",), op != "view")
                out.append("")

    opens = [r for r in rows if r["case"] == "open"]
    if opens:
        out += [
            "",
            "## Opening a 1 KiB segment (time per call)",
            "",
            "`c-syscalls` makes the same system calls from C, looping in C: attach is "
            "shm_open, fstat, mmap, touching one byte, close, munmap (also the floor of "
            "open-or-create of an existing name); create is shm_open O_CREAT|O_EXCL, "
            "ftruncate, mmap, close, munmap, shm_unlink. `SharedMemory` is fastshm's "
            "drop-in; `stdlib` is multiprocessing's; `posix_ipc` is its SharedMemory "
            "with an mmap.",
            "",
        ]
        out += _long_table(opens, floor_label("open", ""), ("op",), False)

    rt = [r for r in rows if r["case"] == "round trip"]
    if rt:
        out += [
            "",
            "## Round trip between two processes",
            "",
            "Each side stores (sends), waits and loads (receives); `c-spin` is two C "
            "processes handing the message back and forth through an atomic counter "
            "in a shared mapping with one memcpy each way, spinning (yielding the core "
            "only after 1 ms); `c-spin-yield` the same yielding every 256 spins, "
            "which a machine with more runnable work than cores rewards at large "
            "sizes. The floor at each size is the faster of the two. "
            "`iceoryx2` (64 B and 1 MiB) and `stdlib-poll` busy-poll too, a core each; "
            "fastshm's `wait()` spins briefly, then sleeps in the kernel.",
            "",
        ]
        out += _long_table(rt, floor_label("round trip", ""), ("size",), False)

    idle = [r for r in rows if r["case"] == "idle wait"]
    if idle:
        out += [
            "",
            "## A reader blocked in wait() with no messages",
            "",
        ]
        out += _table(
            ["route", "seconds blocked", "CPU s", "% of a core"],
            [
                [
                    r["contender"],
                    f"{r['seconds']:.2f}",
                    f"{r['cpu_s']:.4f}",
                    f"{r['core_percent']:.3f}",
                ]
                for r in idle
            ],
        )

    ow = [r for r in rows if r["case"] == "one way"]
    if ow:
        cs = _contenders(ow)
        out += [
            "",
            "## One writer, N readers: messages delivered per reader per second (GB/s)",
            "",
            "fastshm and stdlib-poll keep the newest message: a reader slower than the "
            "writer skips messages, and only those it loaded count. The floor is one "
            "C memcpy per message (`memcpy-c` of the copy table at that size): "
            '"× of the floor" is how many times fewer messages a reader gets than '
            "that rate.",
            "",
        ]
        body = []
        for size, n in sorted({(r["size"], r["readers"]) for r in ow}, key=lambda x: (x[1], x[0])):
            floor_ns = _med(rows, case="copy", op="store", contender="memcpy-c", size=size)
            for c in cs:
                r = _find(ow, contender=c, size=size, readers=n)
                if r is None:
                    continue
                ratio = (
                    f"{(1e9 / floor_ns) / max(r['msgs_per_s'], 1e-9):.1f}×" if floor_ns else "n/a"
                )
                body.append(
                    [
                        human_size(size),
                        str(n),
                        c,
                        f"{r['msgs_per_s']:,.0f}",
                        f"{r['throughput_GBps']:.2f}",
                        ratio,
                    ]
                )
        out += _table(
            ["size", "readers", "contender", "msgs/s per reader", "GB/s", "× of the floor"],
            body,
        )

    fr = [r for r in rows if r["case"] == "frames"]
    if fr:
        out += [
            "",
            f"## 1920×1080×3 frames to two consumers ({fr[0]['seconds']:.0f} s each)",
            "",
            "Paced, the producer sends at most 240 frames/s, as a camera would (a channel "
            "that blocks it makes it drop frames); unpaced, it sends as fast as it can "
            "and the three processes share the two cores. fastshm consumers take the "
            "newest frame (load_into a ready numpy array), Pipe consumers "
            "recv_bytes_into one, Queue consumers get a pickled array. The floor of "
            "the rate is 240 fps paced, and one C memcpy of a frame per frame unpaced.",
            "",
        ]
        frame_floor = fr[0].get("memcpy_c_ns")
        body = []
        for r in fr:
            floor_fps = r["paced_fps"] or (1e9 / frame_floor if frame_floor else None)
            body.append(
                [
                    r["op"],
                    r["contender"],
                    f"{r['fps_per_consumer']:.0f}",
                    f"{floor_fps / max(r['fps_per_consumer'], 1e-9):.2f}×" if floor_fps else "n/a",
                    f"{r['sent_fps']:.0f}",
                    f"{r['cpu_s']:.2f}",
                    f"{r['cpu_ms_per_delivered_frame']:.2f}",
                ]
            )
        out += _table(
            [
                "producer",
                "contender",
                "fps per consumer",
                "× of the floor",
                "frames sent/s",
                "CPU s (3 processes)",
                "CPU ms per delivered frame",
            ],
            body,
        )

    out += _queue_sections(meta, rows)
    from .report_channels import channel_sections

    out += channel_sections(meta, rows)
    from .report_aio import aio_sections

    out += aio_sections(meta, rows)

    gl = [r for r in rows if r["case"] == "gil"]
    if gl:
        thr = gl[0].get("gil_release_bytes")
        out += [
            "",
            "## Where releasing the GIL pays for a copy",
            "",
            "One thread stores and loads (store + load_into) while another Python thread "
            "counts in a loop. `copy` is the time per pair with the counter running, its "
            "floor the same pair alone; `counter` is the other thread's progress as a "
            "share of what it counts alone; `combined` adds the copy's rate share and "
            "the counter's (1.0: taking turns on one GIL; up to 2.0: both at once). "
            f"The C-API binding releases the GIL from {human_size(thr)} up"
            if thr
            else "One thread stores and loads while another counts.",
        ]
        if thr:
            out[-1] += "; cffi releases it around every call; `memcpy` (two slice copies) never."
        out.append("")
        out += _table(
            [
                "size",
                "route",
                "GIL during copy",
                "copy",
                "alone",
                "× of the floor (alone)",
                "counter",
                "combined",
            ],
            [
                [
                    human_size(r["size"]),
                    r["contender"],
                    r["gil"],
                    human_ns(r["median_ns"]),
                    human_ns(r["alone_ns"]),
                    f"{r['median_ns'] / r['alone_ns']:.2f}×",
                    f"{100 * r['counter_share']:.0f}%",
                    f"{r['combined']:.2f}",
                ]
                for r in gl
            ],
        )
        cross = gil_crossover(rows)
        if cross:
            out += ["", cross]
    out += [
        "",
        "Plots: copy_path.png (main), round_trip.png, open_costs.png, one_way.png, frames.png, "
        "queues.png, channels.png, aio.png.",
        "",
    ]
    return "\n".join(out)


def _queue_plan(rows: List[Dict[str, Any]]) -> List[Tuple[int, int, int, str]]:
    """The (size, producers, consumers, consumer) of the queue cases, in
    the order they ran."""
    seen: List[Tuple[int, int, int, str]] = []
    for r in rows:
        if r["case"] == "queue":
            k = (r["size"], r["producers"], r["consumers"], r["consumer"])
            if k not in seen:
                seen.append(k)
    return seen


def _queue_sections(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[str]:
    out: List[str] = []
    qs = [r for r in rows if r["case"] == "queue"]
    skipped = meta.get("queue_skipped") or {}
    if qs:
        secs = qs[0]["seconds"]
        out += [
            "",
            f"## Queues: producers putting as fast as they can ({secs:g} s each)",
            "",
            "Every message put is taken (a message lost would show in the last column). "
            "`msgs/s` is what the consumers had taken by the end of the producers' "
            "seconds, `put/s` what the producers put in them (what was still queued "
            "is taken afterwards); CPU is every child's own "
            "(getrusage, all its threads: a multiprocessing.Queue's feeder thread "
            "pickles and writes), per message taken. fastshm queues and faster-fifo "
            "hold 1 MiB of messages; `full` is the share of the looks every 2 ms that "
            "found no room for another message (n/a where the queue cannot be looked "
            "at): a consumer that keeps level leaves it near 0. `get_many` consumers "
            "take all that is queued in one call. `faster-fifo` runs on its bytes "
            "path (no pickling); `queue` is multiprocessing.Queue(maxsize) holding as "
            "many messages as the fastshm queue (unbounded, a producer that never pauses "
            "starves its feeder thread of the GIL while the backlog grows), "
            "`simplequeue` multiprocessing.SimpleQueue, `pipe` one direction of "
            "multiprocessing.Pipe (one producer and one consumer only). The floor, "
            "`c-queue`, is the same fastshm queue driven by C processes "
            f"({meta.get('c_queue_floor', 'n/a')}): "
            '"× of the floor" is how many times fewer messages a contender delivers.',
            "",
        ]
        body = []
        for size, p, c, how in _queue_plan(rows):
            sub = [
                r
                for r in qs
                if (r["size"], r["producers"], r["consumers"], r["consumer"]) == (size, p, c, how)
            ]
            floor = next((r for r in sub if r["contender"] == "c-queue"), None)
            for r in sub:
                body.append(
                    [
                        human_size(size),
                        f"{p} → {c}",
                        how,
                        r["contender"],
                        f"{r['msgs_per_s']:,.0f}",
                        f"{r['put_msgs_per_s']:,.0f}",
                        f"{r['throughput_GBps']:.3f}",
                        f"{r['cpu_us_per_msg']:.2f}",
                        "n/a" if r["full_share"] is None else f"{100 * r['full_share']:.1f}%",
                        f"{floor['msgs_per_s'] / max(r['msgs_per_s'], 1e-9):.1f}×"
                        if floor
                        else "n/a",
                        f"{r['lost']:.0f}",
                    ]
                )
        out += _table(
            [
                "size",
                "producers → consumers",
                "consumer",
                "contender",
                "msgs/s",
                "put/s",
                "GB/s",
                "CPU µs per message",
                "full",
                "× of the floor (c-queue)",
                "lost",
            ],
            body,
        )
    qrt = [r for r in rows if r["case"] == "queue round trip"]
    if qrt:
        out += [
            "",
            "## Round trip through two queues",
            "",
            "One side puts, the other gets and puts the same bytes back into a second "
            "queue; `pipe` is a duplex multiprocessing.Pipe, `queue` two bounded "
            "multiprocessing.Queues. The floor is the C ping-pong of the round-trip "
            "table (`c-spin`, `c-spin-yield`: two C processes spinning on shared "
            "memory), the faster of the two at each size.",
            "",
        ]
        out += _long_table(qrt, floor_label("queue round trip", ""), ("size",), False)
    if (qs or qrt) and skipped:
        out += ["", "Left out of the queue cases here: "]
        out[-1] += "; ".join(f"`{k}` ({v})" for k, v in skipped.items()) + "."
    return out


def gil_crossover(rows: List[Dict[str, Any]]) -> str:
    """For each route that releases the GIL, the sizes where it does more
    combined work than holding it (two slice copies, ``memcpy``), and what
    the copy itself pays for it."""
    gl = [r for r in rows if r["case"] == "gil"]
    sizes = sorted({r["size"] for r in gl})
    lines = []
    for route in ("native", "native-cffi"):
        parts, wins = [], []
        for size in sizes:
            rel = _find(gl, size=size, contender=route, gil="released")
            hold = _find(gl, size=size, contender="memcpy")
            if not (rel and hold):
                continue
            parts.append(
                f"{human_size(size)} {rel['combined']:.2f} against {hold['combined']:.2f} "
                f"(copy {rel['median_ns'] / rel['alone_ns']:.1f}x against "
                f"{hold['median_ns'] / hold['alone_ns']:.1f}x its time alone)"
            )
            if rel["combined"] > hold["combined"]:
                wins.append(size)
        if not parts:
            continue
        losses = [
            s
            for s in sizes
            if s not in wins and any(p.startswith(human_size(s) + " ") for p in parts)
        ]
        first = next(
            (s for s in sizes if s in wins and all(t in wins for t in sizes if t >= s)), None
        )
        verdict = (
            f"does more combined work than holding it from {human_size(first)} up"
            if first is not None
            else "does more combined work than holding it at "
            + (", ".join(human_size(s) for s in wins) or "no size")
            + ", less at "
            + ", ".join(human_size(s) for s in losses)
        )
        lines.append(f"`{route}` releasing the GIL {verdict}: " + "; ".join(parts) + ".")
    return "\n\n".join(lines)


# ---- plots ----


def plots(rows: List[Dict[str, Any]], outdir: str, title: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    made = []

    def save(fig: Any, name: str) -> None:
        path = os.path.join(outdir, name)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)

    def lines(
        ax: Any, sub: List[Dict[str, Any]], key: str, scale: float = 1.0, logy: bool = True
    ) -> None:
        for c in _contenders(sub):
            pts = sorted((r["size"], r[key] * scale) for r in sub if r["contender"] == c)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                ms=3,
                label=c,
                color=COLORS.get(c),
                lw=2.2 if c == "native" else 1.2,
            )
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        sizes = sorted({r["size"] for r in sub})
        ax.set_xticks(sizes)
        ax.set_xticklabels([human_size(x).replace(" ", "\n") for x in sizes], fontsize=7)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)

    copy = [r for r in rows if r["case"] == "copy"]
    if copy:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        for ax, op in zip(axes.flat, ("store", "load", "load_into", "view")):
            sub = [r for r in copy if r["op"] == op]
            if op == "view":
                lines(ax, sub, "median_ns", logy=False)
                ax.set_ylabel("ns per call (lower is better)")
            else:
                lines(ax, sub, "throughput_GBps")
                ax.set_ylabel("GB/s (higher is better)")
            ax.set_title(op)
            ax.set_xlabel("message size (bytes)")
            ax.legend(fontsize=7)
        fig.suptitle(f"fastshm copy path, one process: {title}", fontsize=10)
        fig.tight_layout()
        save(fig, "copy_path.png")

    rt = [r for r in rows if r["case"] == "round trip"]
    if rt:
        fig, ax = plt.subplots(figsize=(8, 5))
        lines(ax, rt, "median_ns", 1e-3)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("round trip, µs (lower is better)")
        ax.set_title(f"Round trip between two processes: {title}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, "round_trip.png")

    opens = [r for r in rows if r["case"] == "open"]
    if opens:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        cs = _contenders(opens)
        opnames = ["create+unlink", "attach+close", "open-or-create existing"]
        w = 0.8 / len(cs)
        for i, c in enumerate(cs):
            vals = [(_med(opens, op=o, contender=c) or 0) / 1e3 for o in opnames]
            ax.bar([j + i * w for j in range(len(opnames))], vals, w, label=c, color=COLORS.get(c))
        ax.set_xticks([j + w * (len(cs) - 1) / 2 for j in range(len(opnames))])
        ax.set_xticklabels(opnames)
        ax.set_yscale("log")
        ax.set_ylabel("µs per call (lower is better)")
        ax.set_title(f"Opening a 1 KiB segment: {title}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, "open_costs.png")

    ow = [r for r in rows if r["case"] == "one way"]
    if ow:
        readers = sorted({r["readers"] for r in ow})
        fig, axes = plt.subplots(1, len(readers), figsize=(5 * len(readers), 4.5), squeeze=False)
        for ax, n in zip(axes[0], readers):
            lines(ax, [r for r in ow if r["readers"] == n], "throughput_GBps")
            ax.set_title(f"{n} reader(s)")
            ax.set_xlabel("message size (bytes)")
            ax.set_ylabel("GB/s delivered per reader")
            ax.legend(fontsize=7)
        fig.suptitle(f"One writer, N readers: {title}", fontsize=10)
        fig.tight_layout()
        save(fig, "one_way.png")

    fr = [r for r in rows if r["case"] == "frames"]
    if fr:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        modes = []
        for r in fr:
            if r["op"] not in modes:
                modes.append(r["op"])
        cs = _contenders(fr)
        w = 0.8 / max(1, len(modes))
        for i, mode in enumerate(modes):
            sub = {r["contender"]: r for r in fr if r["op"] == mode}
            xs = [j + i * w for j in range(len(cs))]
            fps = [sub[c]["fps_per_consumer"] if c in sub else 0 for c in cs]
            cpu = [sub[c]["cpu_ms_per_delivered_frame"] if c in sub else 0 for c in cs]
            a1.bar(xs, fps, w, label=mode)
            a2.bar(xs, cpu, w, label=mode)
        for ax in (a1, a2):
            ax.set_xticks([j + w * (len(modes) - 1) / 2 for j in range(len(cs))])
            ax.set_xticklabels(cs)
            ax.legend(fontsize=8)
        a1.set_ylabel("frames per second per consumer")
        a2.set_ylabel("CPU ms per delivered frame")
        fig.suptitle(f"1920×1080×3 frames to two consumers: {title}", fontsize=10)
        fig.tight_layout()
        save(fig, "frames.png")
    qs = [r for r in rows if r["case"] == "queue"]
    qrt = [r for r in rows if r["case"] == "queue round trip"]
    if qs or qrt:
        panels: List[Any] = list(_queue_plan(rows)) + sorted({r["size"] for r in qrt})
        ncol = min(3, len(panels))
        nrow = (len(panels) + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        for ax, panel in zip(axes.flat, panels):
            if isinstance(panel, tuple):
                size, p, c, how = panel
                sub = [
                    r
                    for r in qs
                    if (r["size"], r["producers"], r["consumers"], r["consumer"]) == panel
                ]
                vals = [r["msgs_per_s"] for r in sub]
                ax.set_title(f"{human_size(size)}, {p} → {c}, {how}", fontsize=9)
                ax.set_xlabel("messages/s taken (higher is better)")
            else:
                sub = [r for r in qrt if r["size"] == panel]
                vals = [r["median_ns"] / 1e3 for r in sub]
                ax.set_title(f"round trip, {human_size(panel)}", fontsize=9)
                ax.set_xlabel("µs (lower is better)")
            names = [r["contender"] for r in sub]
            ax.barh(names, vals, color=[COLORS.get(n, "#999999") for n in names])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, axis="x", which="both", alpha=0.3)
        fig.suptitle(f"Queues across processes: {title}", fontsize=10)
        fig.tight_layout()
        save(fig, "queues.png")
    from .report_channels import channel_plot

    fig = channel_plot(rows, plt, title)
    if fig is not None:
        save(fig, "channels.png")
    from .report_aio import aio_plot

    aio_fig = aio_plot(rows, plt, title)
    if aio_fig is not None:
        save(aio_fig, "aio.png")
    return made


def write_json(
    path: str, meta: Dict[str, Any], rows: List[Dict[str, Any]], verdicts: List[Dict[str, Any]]
) -> None:
    def tidy(v: Any) -> Any:
        return round(v, 4) if isinstance(v, float) else v

    clean = [{k: tidy(v) for k, v in r.items()} for r in rows]
    with open(path, "w") as f:
        json.dump({"meta": meta, "targets": verdicts, "results": clean}, f, indent=1)
        f.write("\n")
