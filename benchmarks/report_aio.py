"""The asyncio cases' part of the report: targets A1-A4, their markdown
section and aio.png (``report`` calls these).

The targets rest on the default event loop's rows.  Beside them, two
informational lines (``info``: no verdict): A2f, fastshm.aio's wake-up
against the floor of any event-loop wake-up, a socket's, on the same loop;
A4u, the ping-pong with both processes on uvloop."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .report import COLORS, _find, _table, _verdict, human_ns

Row = Dict[str, Any]

# A1-A4, as the issue sets them.
A1_IDLE = 0.5  # % of a core, 1000 tasks awaiting get()
A2_THREAD = 1.5  # at most this many times a blocked thread's median wake-up
A3_EXECUTOR = 3.0  # at least this many times faster than run_in_executor
A4_PING = 3.0  # at least this many times the faster contender's round trips/s
UVLOOP = "-uvloop"  # a contender on uvloop's loop: its name ends so (aio.py)
AIO_COLORS = {
    "aio": "#d62728",
    "executor": "#8c564b",
    "thread": "#1f77b4",
    "socket": "#7f7f7f",
    "streams": "#17becf",
    "zmq": "#2ca02c",
}
LABELS = {
    "aio": "fastshm.aio",
    "executor": "run_in_executor",
    "thread": "thread in Segment.wait()",
    "socket": "socket (loop.sock_recv)",
    "streams": "asyncio streams (Unix socket)",
    "zmq": "zmq.asyncio (ipc)",
}


def _uv(c: str) -> bool:
    return c.endswith(UVLOOP)


def _base(c: str) -> str:
    return c[: -len(UVLOOP)] if _uv(c) else c


def _label(c: str) -> str:
    label = LABELS.get(_base(c), _base(c))
    return f"{label} on uvloop" if _uv(c) else label


def _color(c: str) -> Optional[str]:
    return AIO_COLORS.get(_base(c), COLORS.get(_base(c)))


def _default_loop(rows: List[Row]) -> List[Row]:
    """The rows of asyncio's default loop (and the thread's): the ones the
    targets rest on."""
    return [r for r in rows if not _uv(r["contender"])]


def _wake_floor(wake: List[Row]) -> Dict[str, Any]:
    """A2f: fastshm.aio's wake-up against a socket's on the same loop,
    default loop first, then uvloop's when it ran."""
    goal = (
        "not a target: the floor of an event-loop wake-up, the same message written by "
        "another process to a Unix socket the same loop awaits (`loop.sock_recv`), and "
        "fastshm.aio's median over it"
    )
    parts: List[str] = []
    extra: Dict[str, Any] = {}
    for suffix, where in (("", "default loop"), (UVLOOP, "uvloop")):
        aio, sock = _find(wake, contender="aio" + suffix), _find(wake, contender="socket" + suffix)
        if suffix and aio is None and sock is None:
            continue
        if suffix and aio is not None and "skipped" in aio:
            parts.append(f"{where}: not run ({aio['skipped']})")
            continue
        why = _broken(sock, "median_ns")
        if why:
            parts.append(f"{where}: socket {why}")
            continue
        assert sock is not None
        text = (
            f"{where}: socket median {human_ns(sock['median_ns'])} (p99 "
            f"{human_ns(sock['p99_ns'])})"
        )
        why = _broken(aio, "median_ns")
        if why:
            text += f", fastshm.aio {why}"
        else:
            assert aio is not None
            ratio = aio["median_ns"] / sock["median_ns"]
            text += f", fastshm.aio {human_ns(aio['median_ns'])} = {ratio:.2f}x it"
            extra["socket_ratio" + suffix.replace("-", "_")] = ratio
        parts.append(text)
    return _verdict("A2f", goal, None, "; ".join(parts) or "not measured", info=True, **extra)


def _ping_uvloop(pp: List[Row]) -> Optional[Dict[str, Any]]:
    """A4u: the ping-pong with both processes on uvloop; None when its rows
    are not in this run."""
    aio, streams = _find(pp, contender="aio" + UVLOOP), _find(pp, contender="streams" + UVLOOP)
    if aio is None and streams is None:
        return None
    goal = (
        "not a target: the same ping-pong with both processes on uvloop, fastshm.aio "
        "against asyncio streams over a Unix socket"
    )
    why = _broken(aio, "trips_per_s") or _broken(streams, "trips_per_s")
    if why:
        return _verdict("A4u", goal, None, why, info=True)
    assert aio is not None and streams is not None
    ratio = aio["trips_per_s"] / max(streams["trips_per_s"], 1e-9)
    value = (
        f"{ratio:.2f}x ({aio['trips_per_s']:,.0f} against {streams['trips_per_s']:,.0f} "
        "round trips/s, asyncio streams on uvloop)"
    )
    return _verdict("A4u", goal, None, value, info=True, ratio=ratio)


def _broken(r: Optional[Row], key: str) -> Optional[str]:
    """Why a row cannot count: not run, failed, or no figure."""
    if r is None:
        return "not measured"
    if "skipped" in r:
        return f"not run: {r['skipped']}"
    if "error" in r:
        return f"failed: {r['error']}"
    if r.get(key) is None:
        return "no figure"
    return None


def _mib(kib: float) -> str:
    return f"{kib / 1024:+.1f} MiB"


def _woken(r: Row) -> str:
    """Whether every task ended, with its own message, and none before."""
    ok = r["ended"] == r["right"] == r["tasks"] and not r["ended_early"]
    if ok:
        return "all"
    return (
        f"{r['right']} of {r['tasks']} with their message ({r['ended']} ended, "
        f"{r['ended_early']} before any message)"
    )


def aio_targets(rows: List[Row]) -> List[Dict[str, Any]]:
    """A1-A4 from this run's asyncio rows; ``met`` None where a contender
    could not be measured."""
    out: List[Dict[str, Any]] = []

    # A1: many tasks awaiting, idle.
    idle = [r for r in rows if r["case"] == "aio idle"]
    n = idle[0]["tasks"] if idle else 1000
    goal = (
        f"{n} tasks awaiting `fastshm.aio.Queue.get()` with nothing to get: < {A1_IDLE:g}% "
        "of a core (against `run_in_executor` of the blocking get, a thread each)"
    )
    aio, ex = _find(idle, contender="aio"), _find(idle, contender="executor")
    broken = _broken(aio, "core_percent")
    if broken:
        out.append(_verdict("A1", goal, False if aio and "skipped" not in aio else None, broken))
    else:
        assert aio is not None
        value = (
            f"{aio['core_percent']:.3f}% of a core, {aio['threads']} threads, "
            f"{_mib(aio['rss_delta_kib'])}; woken: {_woken(aio)}"
        )
        extra: Dict[str, Any] = {"idle_percent": aio["core_percent"]}
        if _broken(ex, "core_percent") is None:
            assert ex is not None
            ratio = ex["core_percent"] / max(aio["core_percent"], 1e-6)
            value += (
                f"; executor {ex['core_percent']:.2f}% ({ratio:.0f}x fastshm.aio's), "
                f"{ex['threads']} threads, {_mib(ex['rss_delta_kib'])}"
            )
            extra["executor_ratio"] = ratio
        else:
            value += f"; executor {_broken(ex, 'core_percent')}"
        met = aio["core_percent"] < A1_IDLE and _woken(aio) == "all"
        out.append(_verdict("A1", goal, met, value, **extra))

    # A2, A3: the wake-up against a blocked thread and against run_in_executor.
    all_wake = [r for r in rows if r["case"] == "aio wake"]
    wake = _default_loop(all_wake)
    pause = next((r["pause_s"] for r in wake if "pause_s" in r), 0.002)
    aio = _find(wake, contender="aio")
    detail = "; ".join(
        f"{_label(r['contender'])} median {human_ns(r['median_ns'])}, p99 "
        f"{human_ns(r['p99_ns'])}, {r['missed']} of {r['sent']} woken only after the next "
        "message"
        for r in wake
        if _broken(r, "median_ns") is None
    )
    for tid, other, goal in (
        (
            "A2",
            "thread",
            f"one-way wake-up of a task awaiting `fastshm.aio.Segment.wait()` (a store in "
            f"another process every {1e3 * pause:g} ms): median <= {A2_THREAD:g}x a thread "
            "blocked in `Segment.wait()`",
        ),
        (
            "A3",
            "executor",
            f"the same wake-up >= {A3_EXECUTOR:g}x faster than awaiting "
            "`loop.run_in_executor(None, seg.wait)` (medians)",
        ),
    ):
        them = _find(wake, contender=other)
        broken = _broken(aio, "median_ns")
        if broken:
            met_: Optional[bool] = False if aio and "skipped" not in aio else None
            out.append(_verdict(tid, goal, met_, broken, detail))
            continue
        why = _broken(them, "median_ns")
        if why:
            out.append(_verdict(tid, goal, None, f"n/a ({_label(other)} {why})", detail))
            continue
        assert aio is not None and them is not None
        a, b = aio["median_ns"], them["median_ns"]
        if tid == "A2":
            ratio = a / b
            met = ratio <= A2_THREAD
            value = f"{ratio:.2f}x the thread's ({human_ns(a)} against {human_ns(b)}"
        else:
            ratio = b / a
            met = ratio >= A3_EXECUTOR
            value = (
                f"{ratio:.2f}x (the executor's median {human_ns(b)} over fastshm.aio's "
                f"{human_ns(a)}"
            )
        value += f"; p99 {human_ns(aio['p99_ns'])} and {human_ns(them['p99_ns'])})"
        # The figures of all three go with A2 once.
        out.append(_verdict(tid, goal, met, value, detail if tid == "A2" else "", ratio=ratio))
    if any(_base(r["contender"]) == "socket" for r in all_wake):  # not in older runs
        out.append(_wake_floor(all_wake))

    # A4: ping-pong between two asyncio processes.
    all_pp = [r for r in rows if r["case"] == "aio ping-pong"]
    pp = _default_loop(all_pp)
    goal = (
        "64 B ping-pong between two asyncio processes through two `fastshm.aio.Queue`: "
        f"round trips/s >= {A4_PING:g}x the faster of asyncio streams over a Unix socket "
        "and zmq.asyncio"
    )
    aio = _find(pp, contender="aio")
    others = [r for r in pp if r["contender"] != "aio"]
    ok = [r for r in others if _broken(r, "trips_per_s") is None]
    missing = "; ".join(
        f"{_label(r['contender'])} {_broken(r, 'trips_per_s')}"
        for r in others
        if _broken(r, "trips_per_s")
    )
    detail = "; ".join(
        f"{_label(r['contender'])} {r['trips_per_s']:,.0f} round trips/s "
        f"({human_ns(r['round_trip_ns'])} each)"
        for r in pp
        if _broken(r, "trips_per_s") is None
    )
    broken = _broken(aio, "trips_per_s")
    if broken is None and aio is not None and aio.get("bad"):
        broken = f"{aio['bad']} wrong messages ({aio.get('first_bad', '')})"
    if broken:
        out.append(
            _verdict("A4", goal, False if aio and "skipped" not in aio else None, broken, detail)
        )
    elif not ok:
        out.append(_verdict("A4", goal, None, f"n/a ({missing or 'no contender'})", detail))
    else:
        assert aio is not None
        best = max(ok, key=lambda r: r["trips_per_s"])
        ratio = aio["trips_per_s"] / max(best["trips_per_s"], 1e-9)
        value = (
            f"{ratio:.2f}x ({aio['trips_per_s']:,.0f} against {best['trips_per_s']:,.0f} "
            f"round trips/s, {_label(best['contender'])})"
        )
        if missing:
            value += f"; {missing}"
        out.append(_verdict("A4", goal, ratio >= A4_PING, value, detail, ratio=ratio))
    uv = _ping_uvloop(all_pp)
    if uv is not None:
        out.append(uv)
    return out


# ---- markdown ----


def aio_sections(meta: Dict[str, Any], rows: List[Row]) -> List[str]:
    ours = [r for r in rows if r["case"].startswith("aio ")]
    if not ours:
        return []
    sleeps = meta.get("aio_sleeps_in", "futex_waitv")
    if "io_uring" in sleeps:
        how = (
            "a task that must wait adds a futex wait on the object's wake-up word to its "
            "loop's own io_uring, whose descriptor the loop watches like a socket's: the "
            "writer's futex wake completes the wait and wakes the loop in its own epoll, "
            "no helper thread between."
        )
    else:
        how = (
            "a task that must wait hands the object's wake-up word to a helper thread "
            f"(one per 127 waited objects), which sleeps in {sleeps} and wakes the loop "
            "with `call_soon_threadsafe`."
        )
    uv = meta.get("aio_uvloop")
    out = [
        "",
        "## asyncio: fastshm.aio across processes",
        "",
        f"`fastshm.aio` objects on asyncio's default event loop; {how} `executor` is "
        "`loop.run_in_executor` of the blocking call (a thread each); `thread` a thread "
        "blocked in `Segment.wait()`, no event loop; `socket` the same loop woken through "
        "a Unix socket, the floor of any event-loop wake-up. The rows `on uvloop` run the "
        f"same on uvloop's loop{f' (uvloop {uv})' if uv else ''}: informational, the "
        "targets rest on the default loop's rows. Every case runs in child processes "
        "started with `spawn`.",
    ]
    skipped = meta.get("aio_skipped") or {}
    if skipped:
        out += [
            "",
            "Left out of the asyncio cases here: "
            + "; ".join(f"`{k}` ({v})" for k, v in skipped.items())
            + ".",
        ]

    idle = [r for r in ours if r["case"] == "aio idle"]
    if idle:
        n = idle[0]["tasks"]
        out += [
            "",
            f"### A1: {n} tasks awaiting get() with nothing to get",
            "",
            f"A child opens {n} queues of 4 KiB and starts a task per queue awaiting "
            "`get()` (`executor`: awaiting `run_in_executor(pool, q.get)` on the "
            f"synchronous queues, `ThreadPoolExecutor(max_workers={n})`); after "
            f"{idle[0].get('settle_s', 0.5):g} s its CPU (getrusage, all its threads) over "
            "the idle window, its threads (`threading.active_count()`) and the growth of "
            "its resident memory (VmRSS) since just before the tasks were made. Then this "
            "process puts one message into each queue: `woken` counts the tasks that ended "
            "with their own message, and how long all took (the puts included).",
            "",
        ]
        body = []
        for r in idle:
            if "skipped" in r or "error" in r:
                why = f"not run: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
                body.append([_label(r["contender"]), why] + [""] * 7)
                continue
            body.append(
                [
                    _label(r["contender"]),
                    f"{r['seconds']:.2f}",
                    f"{r['cpu_s'] * 1e3:.2f}",
                    f"{r['core_percent']:.3f}",
                    f"{r['threads']}" + (
                        f" ({r['helper_threads']} helpers)" if r.get("helper_threads") else ""
                    ),
                    _mib(r["rss_delta_kib"]),
                    _mib(r["rss_open_kib"]),
                    _woken(r),
                    f"{1e3 * r['woke_s']:.1f} ms",
                ]
            )
        out += _table(
            [
                "contender",
                "seconds idle",
                "CPU ms",
                "% of a core",
                "threads",
                "memory of the tasks",
                "memory of opening the queues",
                "woken",
                "all woken in",
            ],
            body,
        )

    wake = [r for r in ours if r["case"] == "aio wake"]
    if wake:
        pause = next((r["pause_s"] for r in wake if "pause_s" in r), 0.002)
        thread = _find(wake, contender="thread")
        base = thread["median_ns"] if thread and thread.get("median_ns") else None

        def floor_of(c: str) -> Optional[float]:
            """The median of the socket's wake-up on ``c``'s loop."""
            if c == "thread":
                return None  # no loop
            r = _find(wake, contender="socket" + (UVLOOP if _uv(c) else ""))
            return r["median_ns"] if r and r.get("median_ns") else None

        out += [
            "",
            "### A2, A3: wake-up latency, one way",
            "",
            f"This process stores into a Segment every {1e3 * pause:g} ms (so each wake-up "
            "is a sleep and a wake) a message of its number and `time.perf_counter_ns()` "
            "(CLOCK_MONOTONIC, one clock for the machine); the waiting child reads the clock "
            "as soon as its wait returns and subtracts. `fastshm.aio` awaits "
            "`fastshm.aio.Segment.wait()`, `run_in_executor` awaits "
            "`loop.run_in_executor(None, seg.wait)`, the thread blocks in `Segment.wait()`. "
            "`socket`: the same messages written (`sendall`) to one end of a Unix socket "
            "pair, the child's loop awaiting the other (`loop.sock_recv`); the floor of an "
            "event-loop wake-up, and the last column divides by it, the same loop's. "
            "Contenders take turns in blocks, after an untimed warm-up. `late` counts the "
            "messages a waiter was woken for only after the next one was stored (more than "
            f"{1e3 * pause:g} ms late): they have no figure of their own (a socket's waiter "
            "that finds several messages takes the newest).",
            "",
        ]
        body = []
        for r in wake:
            if _broken(r, "median_ns"):
                body.append([_label(r["contender"]), _broken(r, "median_ns") or ""] + [""] * 6)
                continue
            floor = floor_of(r["contender"])
            body.append(
                [
                    _label(r["contender"]),
                    human_ns(r["median_ns"]),
                    f"{human_ns(r['q1_ns'])}–{human_ns(r['q3_ns'])}",
                    human_ns(r["p99_ns"]),
                    human_ns(r["max_ns"]),
                    f"{r['median_ns'] / base:.2f}×" if base else "n/a",
                    f"{r['missed']} of {r['sent']}",
                    "—" if r["contender"] == "thread"
                    else f"{r['median_ns'] / floor:.2f}×" if floor
                    else "n/a",
                ]
            )
        out += _table(
            [
                "contender",
                "median",
                "IQR",
                "p99",
                "max",
                "× the thread's median",
                "late",
                "× the same loop's socket",
            ],
            body,
        )

    pp = [r for r in ours if r["case"] == "aio ping-pong"]
    if pp:
        def mine(c: str) -> Optional[float]:
            """fastshm.aio's rate on ``c``'s loop."""
            r = _find(pp, contender="aio" + (UVLOOP if _uv(c) else ""))
            return r["trips_per_s"] if r and r.get("trips_per_s") else None

        secs = next((r["seconds"] for r in pp if "seconds" in r), 0)
        warm = next((r["warm_trips"] for r in pp if "warm_trips" in r), 0)
        out += [
            "",
            "### A4: 64 B ping-pong between two asyncio processes",
            "",
            "Process A sends a 64 B message and awaits the answer; process B awaits each "
            "message and sends it back. `fastshm.aio`: A puts to one `fastshm.aio.Queue` "
            "(`await q1.put`), B awaits it (`await q1.get()`) and puts to a second, which A "
            "awaits. Streams: `start_unix_server` / `open_unix_connection`, `write` + "
            "`await drain()`, `await readexactly(64)`. zmq: `zmq.asyncio` PAIR sockets over "
            "`ipc://`. On uvloop, both processes run uvloop's loop, and the last column "
            "divides fastshm.aio's rate on uvloop by the row's. "
            "Each message carries its number, checked on its return (`bad`). "
            f"Runs of {secs:g} s after {warm} untimed round trips, contenders in turns; the "
            "median run. A's CPU is per round trip.",
            "",
        ]
        body = []
        for r in pp:
            broken = _broken(r, "trips_per_s")
            if broken:
                body.append([_label(r["contender"]), broken] + [""] * 5)
                continue
            m = mine(r["contender"])
            body.append(
                [
                    _label(r["contender"]),
                    f"{r['trips_per_s']:,.0f}",
                    f"{r['min_trips_per_s']:,.0f}–{r['max_trips_per_s']:,.0f}",
                    human_ns(r["round_trip_ns"]),
                    f"{r['pinger_cpu_us_per_trip']:.1f}",
                    f"{m / r['trips_per_s']:.2f}×" if m else "n/a",
                    f"{r['bad']} in {r['runs']} run(s)",
                ]
            )
        out += _table(
            [
                "contender",
                "round trips/s",
                "min–max",
                "round trip",
                "A's CPU µs per trip",
                "fastshm.aio's rate (same loop) ÷ this",
                "bad",
            ],
            body,
        )
    return out


# ---- plot ----


def aio_plot(rows: List[Row], plt: Any, title: str) -> Optional[Any]:
    """aio.png: idle CPU, wake-up latency and ping-pong rate; None when no
    asyncio case ran.  The default loop's contenders first, in full colour;
    the uvloop rows after them, hatched and paler, the wake-up's medians only
    (its axis logarithmic, as its p99s can be far beyond its medians)."""
    ours = [r for r in rows if r["case"].startswith("aio ") and "error" not in r]
    panels: List[Tuple[str, List[Tuple[str, float]], str]] = []
    idle = [r for r in ours if r["case"] == "aio idle" and r.get("core_percent") is not None]
    if idle:
        panels.append(
            (
                f"A1: {idle[0]['tasks']} tasks awaiting get(), idle",
                [(r["contender"], r["core_percent"]) for r in idle],
                "% of a core (lower is better)",
            )
        )
    wake = [r for r in ours if r["case"] == "aio wake" and r.get("median_ns") is not None]
    if wake:
        main = _default_loop(wake)
        panels.append(
            (
                "A2, A3: one-way wake-up",
                [(f"{r['contender']} median", r["median_ns"] / 1e3) for r in main]
                + [(f"{r['contender']} p99", r["p99_ns"] / 1e3) for r in main]
                + [
                    (f"{r['contender']} median", r["median_ns"] / 1e3)
                    for r in wake
                    if _uv(r["contender"])
                ],
                "µs, log scale (lower is better)",
            )
        )
    pp = [r for r in ours if r["case"] == "aio ping-pong" and r.get("trips_per_s") is not None]
    if pp:
        panels.append(
            (
                "A4: 64 B ping-pong, two asyncio processes",
                [(r["contender"], r["trips_per_s"]) for r in _default_loop(pp)]
                + [(r["contender"], r["trips_per_s"]) for r in pp if _uv(r["contender"])],
                "round trips/s (higher is better)",
            )
        )
    if not panels:
        return None
    most = max(len(p[1]) for p in panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), max(3.6, 1.2 + 0.26 * most)), squeeze=False
    )
    for ax, (name, bars, xlabel) in zip(axes.flat, panels):
        labels = [b[0] for b in bars]
        kinds = [lb.split(" ")[0] for lb in labels]
        colors = [_color(k) or "#999999" for k in kinds]
        drawn = ax.barh(labels, [b[1] for b in bars], color=colors)
        for bar, k in zip(drawn, kinds):
            if _uv(k):
                bar.set_alpha(0.55)
                bar.set_hatch("//")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        if "log scale" in xlabel:  # medians and p99s, a p99 up to 100x a median
            ax.set_xscale("log")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"fastshm.aio across processes: {title}", fontsize=10)
    fig.tight_layout()
    return fig
