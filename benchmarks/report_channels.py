"""The channel cases' part of the report: targets C1-C5, their markdown
section and channels.png (``report`` calls these)."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Tuple

from .report import (
    COLORS,
    _find,
    _long_table,
    _table,
    _verdict,
    floor_label,
    human_ns,
    human_size,
)

Row = Dict[str, Any]

# C1-C5, as the issue sets them.
C1_FPS, C1_CPU = 1.0, 1.0  # frames/s at least iceoryx2's, CPU per frame at most its
C2_COPY, C2_INPLACE = 1.2, 50.0  # times a socketpair's messages/s
C3_FAN = 1.0  # times iceoryx2's deliveries/s
C4_RT = 1.5  # at most this many times the Segment's round trip
C5_IDLE, C5_SAMPLE = 1.0, 0.05  # % of a core; share of a copy
IOX = ("iceoryx2", "iceoryx2-yield")
C_FRAMES = ("c-turns", "c-ring")  # C1's floor: the same stream in C
COPIES = ("copy into a ready buffer", "bytes(sample)", "memcpy-c")
CHANNEL_COLORS = {
    "channel": "#d62728",
    "channel-cffi": "#e377c2",
    "segment": "#1f77b4",
    "segment-cffi": "#aec7e8",
    "fastshm-queue": "#9467bd",
    "iceoryx2": "#2ca02c",
    "iceoryx2-yield": "#98df8a",
    "socket": "#17becf",
    "memcpy-c": "#000000",
    "c-turns": "#7f7f7f",
    "c-ring": "#c7c7c7",
}


def _color(c: str) -> Optional[str]:
    return CHANNEL_COLORS.get(c, COLORS.get(c))


def _ok(r: Optional[Row]) -> bool:
    return r is not None and "error" not in r and r.get("msgs_per_s") is not None


def _best(rows: List[Row], key: str, lowest: bool = False) -> Optional[Row]:
    """The better iceoryx2 run of the two ways its subscribers poll."""
    got = [r for r in rows if r["contender"] in IOX and _ok(r)]
    if not got:
        return None
    return (min if lowest else max)(got, key=lambda r: r[key])


def _broken(r: Optional[Row]) -> Optional[str]:
    """Why a channel row cannot count: it failed, or delivered wrong messages."""
    if r is None:
        return "not measured"
    if "skipped" in r:
        return f"not run: {r['skipped']}"
    if "error" in r:
        return f"failed: {r['error']}"
    if r.get("bad"):
        return f"{r['bad']} wrong messages ({r.get('first_bad', '')})"
    return None


def _paired(ch: Row, other: Row, key: str) -> Optional[Tuple[float, int]]:
    """The median over repeats of the channel's ``key`` divided by
    ``other``'s in the same repeat, and how many repeats had both; None
    without per-run figures (a results.json of an older run)."""
    if "per_run" not in ch or "per_run" not in other:
        return None
    theirs = {x["repeat"]: x[key] for x in other["per_run"] if x[key] > 0}
    ratios = [x[key] / theirs[x["repeat"]] for x in ch["per_run"] if x["repeat"] in theirs]
    return (statistics.median(ratios), len(ratios)) if ratios else None


def _iox_why(rows: List[Row]) -> str:
    why = next((r["skipped"] for r in rows if r["contender"] in IOX and "skipped" in r), None)
    return f"iceoryx2 {why}" if why else "iceoryx2 not measured"


def channel_targets(rows: List[Row]) -> List[Dict[str, Any]]:
    """C1-C5 from this run's channel rows; ``met`` None where a contender
    could not be measured."""
    out: List[Dict[str, Any]] = []

    # C1: frames copied in and out, against iceoryx2.
    goal = (
        "6.2 MB frames (1920×1080×3) unpaced, lossless, copied in and out: frames/s >= "
        "iceoryx2's, CPU per frame (producer + consumer) no higher"
    )
    fr = [r for r in rows if r["case"] == "channel frames" and r["contender"] != "memcpy-c"]
    ch = _find(fr, contender="channel")
    fast, frugal = _best(fr, "msgs_per_s"), _best(fr, "cpu_ms_per_delivered", lowest=True)
    floors = [r for r in fr if r["contender"] in C_FRAMES and _ok(r)]
    floor = max(floors, key=lambda r: r["msgs_per_s"]) if floors else None
    detail = "; ".join(
        f"{r['contender']} {r['msgs_per_s']:,.0f} frames/s, CPU {r['producer_cpu_ms_per_msg']:.3f}"
        f" + {r['consumer_cpu_ms_per_msg']:.3f} ms per frame (producer + consumer)"
        + ("" if r["lossless"] else f", lossy: {r['sent_per_s']:,.0f} sent/s")
        for r in fr
        if _ok(r)
    )
    broken = _broken(ch)
    if broken:
        out.append(_verdict("C1", goal, False if ch else None, broken, detail))
    elif fast is None or frugal is None:
        out.append(_verdict("C1", goal, None, f"n/a ({_iox_why(fr)})", detail))
    else:
        assert ch is not None
        # Against the better iceoryx2 contender (by its median): runs of one
        # repeat were close in time, so their ratios are paired, and the
        # median of those is the verdict; the medians' ratio where the run
        # has no per-run figures.
        p_fps = _paired(ch, fast, "msgs_per_s")
        p_cpu = _paired(ch, frugal, "cpu_ms_per_delivered")
        m_fps = ch["msgs_per_s"] / max(fast["msgs_per_s"], 1e-9)
        m_cpu = ch["cpu_ms_per_delivered"] / max(frugal["cpu_ms_per_delivered"], 1e-9)
        r_fps = p_fps[0] if p_fps else m_fps
        r_cpu = p_cpu[0] if p_cpu else m_cpu
        how = (
            f"median of {p_fps[1]} repeats' ratios to {fast['contender']}; medians "
            f"{ch['msgs_per_s']:,.0f} against {fast['msgs_per_s']:,.0f}: {m_fps:.2f}x"
            if p_fps
            else f"{ch['msgs_per_s']:,.0f} against {fast['msgs_per_s']:,.0f}, {fast['contender']}"
        )
        cpu_how = (
            f"paired, against {frugal['contender']}; medians {ch['cpu_ms_per_delivered']:.3f} "
            f"ms against {frugal['cpu_ms_per_delivered']:.3f} ms: {m_cpu:.2f}x"
            if p_cpu
            else f"{ch['cpu_ms_per_delivered']:.3f} ms against "
            f"{frugal['cpu_ms_per_delivered']:.3f} ms, {frugal['contender']}"
        )
        of_floor = (
            f"; the same stream in C ({floor['contender']}) {floor['msgs_per_s']:,.0f} "
            f"frames/s: channel {ch['msgs_per_s'] / floor['msgs_per_s']:.0%} of it, "
            f"{fast['contender']} {fast['msgs_per_s'] / floor['msgs_per_s']:.0%}"
            if floor
            else ""
        )
        out.append(
            _verdict(
                "C1",
                goal,
                r_fps >= C1_FPS and r_cpu <= C1_CPU,
                f"{r_fps:.2f}x iceoryx2's frames/s ({how}); CPU per frame {r_cpu:.2f}x "
                f"({cpu_how}){of_floor}",
                detail,
                fps_ratio=r_fps,
                cpu_ratio=r_cpu,
            )
        )

    # C2: 16 MiB one to one against a socketpair.
    goal = (
        f"16 MiB one to one: publish + bytes(sample) >= {C2_COPY}x a socketpair's "
        f"messages/s (sendall / recv_into); built in a loan and read in place >= "
        f"{C2_INPLACE:.0f}x"
    )
    big = [r for r in rows if r["case"] == "channel 1:1" and r["contender"] != "memcpy-c"]
    copy = _find(big, contender="channel", op="publish, bytes(sample)")
    inplace = _find(big, contender="channel", op="in place")
    sock = _find(big, contender="socket")
    detail = "; ".join(
        f"{r['contender']} ({r['op']}) {r['msgs_per_s']:,.0f} messages/s" for r in big if _ok(r)
    )
    broken = _broken(copy) or _broken(inplace)
    if broken:
        out.append(_verdict("C2", goal, False if copy or inplace else None, broken, detail))
    elif not _ok(sock):
        out.append(_verdict("C2", goal, None, "n/a (socketpair not measured)", detail))
    else:
        assert copy is not None and inplace is not None and sock is not None
        r_copy = copy["msgs_per_s"] / max(sock["msgs_per_s"], 1e-9)
        r_in = inplace["msgs_per_s"] / max(sock["msgs_per_s"], 1e-9)
        out.append(
            _verdict(
                "C2",
                goal,
                r_copy >= C2_COPY and r_in >= C2_INPLACE,
                f"copied {r_copy:.2f}x ({copy['msgs_per_s']:,.0f} against "
                f"{sock['msgs_per_s']:,.0f} messages/s), in place {r_in:.0f}x "
                f"({inplace['msgs_per_s']:,.0f})",
                detail,
                copy_ratio=r_copy,
                inplace_ratio=r_in,
            )
        )

    # C3: fan-out to 4 subscribers reading in place.
    fan = [r for r in rows if r["case"] == "channel fan-out"]
    n = fan[0]["subscribers"] if fan else 4
    goal = (
        f"1 MiB messages to {n} subscriber processes reading in place: deliveries/s >= "
        "iceoryx2's with as many subscribers"
    )
    ch = _find(fan, contender="channel")
    best = _best(fan, "msgs_per_s")
    detail = "; ".join(
        f"{r['contender']} {r['msgs_per_s']:,.0f} deliveries/s" for r in fan if _ok(r)
    )
    broken = _broken(ch)
    if broken:
        out.append(_verdict("C3", goal, False if ch else None, broken, detail))
    elif best is None:
        out.append(_verdict("C3", goal, None, f"n/a ({_iox_why(fan)})", detail))
    else:
        assert ch is not None
        ratio = ch["msgs_per_s"] / max(best["msgs_per_s"], 1e-9)
        out.append(
            _verdict(
                "C3",
                goal,
                ratio >= C3_FAN,
                f"{ratio:.2f}x ({ch['msgs_per_s']:,.0f} against {best['msgs_per_s']:,.0f} "
                f"deliveries/s, {best['contender']})",
                detail,
                ratio=ratio,
            )
        )

    # C4: 64 B round trip against the Segment's.
    goal = f"64 B publish -> receive round trip (two channels) <= {C4_RT}x the Segment's"
    rt = [r for r in rows if r["case"] == "channel round trip" and r["size"] == 64]
    ch, seg = _find(rt, contender="channel"), _find(rt, contender="segment")
    if ch and seg:
        ratio = ch["median_ns"] / seg["median_ns"]
        detail = ", ".join(f"{r['contender']} {human_ns(r['median_ns'])}" for r in rt)
        out.append(
            _verdict(
                "C4",
                goal,
                ratio <= C4_RT,
                f"{ratio:.2f}x ({human_ns(ch['median_ns'])} against {human_ns(seg['median_ns'])}; "
                f"first quartiles {human_ns(ch['q1_ns'])} against {human_ns(seg['q1_ns'])})",
                detail,
                ratio=ratio,
            )
        )
    else:
        out.append(_verdict("C4", goal, None, "n/a (not measured)"))

    # C5: a blocked receive sleeps; receive + release is nothing beside a copy.
    goal = (
        f"a blocked receive() < {C5_IDLE:g}% of a core; receive + release of a 16 MiB sample "
        f"< {100 * C5_SAMPLE:.0f}% of copying it (the fastest copy measured), on each route"
    )
    idles = [r for r in rows if r["case"] == "channel idle"]
    sm = [r for r in rows if r["case"] == "channel sample"]
    rrs = [r for r in sm if r["op"] == "receive+release"]
    failed = [r for r in rrs if "error" in r]
    cp = _fastest_copy(sm)
    if failed:
        out.append(_verdict("C5", goal, False, f"failed: {failed[0]['error']}"))
    elif idles and rrs and cp:
        shares = {r["contender"]: r["median_ns"] / cp["median_ns"] for r in rrs}
        detail = "idle: " + ", ".join(
            f"{r['contender']} {r['cpu_s'] * 1e3:.2f} ms of CPU in {r['seconds']:.2f} s "
            f"({r['measured_by']}), woken by a message: {'yes' if r['woke'] else 'NO'}"
            for r in idles
        )
        detail += "; " + ", ".join(
            f"{r['contender']} {r['op']} {human_ns(r['median_ns'])}" for r in sm if "median_ns" in r
        )
        out.append(
            _verdict(
                "C5",
                goal,
                all(r["core_percent"] < C5_IDLE and r["woke"] for r in idles)
                and all(v < C5_SAMPLE for v in shares.values()),
                "idle "
                + ", ".join(f"{r['contender']} {r['core_percent']:.2f}%" for r in idles)
                + " of a core; receive+release "
                + ", ".join(
                    f"{r['contender']} {100 * shares[r['contender']]:.2f}% "
                    f"({human_ns(r['median_ns'])})"
                    for r in rrs
                )
                + f" of a copy ({human_ns(cp['median_ns'])}, {cp['op']})",
                detail,
                idle_percent={r["contender"]: r["core_percent"] for r in idles},
                sample_share=shares,
            )
        )
    else:
        out.append(_verdict("C5", goal, None, "n/a (not measured)"))
    return out


def _fastest_copy(sm: List[Row]) -> Optional[Row]:
    """The quickest way of copying the sample measured: into a ready buffer,
    bytes(), or C's memcpy."""
    copies = [r for r in sm if r["op"] in COPIES and r.get("median_ns")]
    return min(copies, key=lambda r: r["median_ns"]) if copies else None


# ---- markdown ----


def _rate_cells(r: Row, floor_rate: Optional[float], floor: bool = True) -> List[str]:
    """msgs/s, (× of the floor), sent/s, CPU µs per message (producer,
    consumer, both per delivery) and wrong messages of one row."""
    width = 7 if floor else 6
    if "skipped" in r:
        return [f"not run: {r['skipped']}"] + [""] * (width - 1)
    if "error" in r and r.get("msgs_per_s") is None:
        return [f"failed: {r['error']}"] + [""] * (width - 1)

    def us(ms: float) -> str:
        return f"{1e3 * ms:,.0f}" if ms >= 0.1 else f"{1e3 * ms:.1f}"

    cells = [f"{r['msgs_per_s']:,.0f}"]
    if floor:
        cells.append(f"{floor_rate / max(r['msgs_per_s'], 1e-9):.2f}×" if floor_rate else "n/a")
    return cells + [
        f"{r['sent_per_s']:,.0f}",
        us(r["producer_cpu_ms_per_msg"]),
        us(r["consumer_cpu_ms_per_msg"]),
        us(r["cpu_ms_per_delivered"]),
        f"{r['bad']}" + (f" (failed: {r['error']})" if "error" in r else ""),
    ]


def _bad_notes(rows: List[Row]) -> List[str]:
    """A line for each contender that delivered wrong messages."""
    notes = [
        f"`{r['contender']}` ({r['op']}): {r['bad']} wrong message(s) over {r['runs']} run(s), "
        f"the first: {r.get('first_bad', '?')}."
        for r in rows
        if r.get("bad")
    ]
    return ["", " ".join(notes)] if notes else []


def _floor_rate(rows: List[Row], case: str) -> Tuple[Optional[float], Optional[float]]:
    f = _find(rows, case=case, contender="memcpy-c")
    if f is None or not f.get("memcpy_ns"):
        return None, None
    return f["memcpy_ns"], 1e9 / f["memcpy_ns"]


def channel_sections(meta: Dict[str, Any], rows: List[Row]) -> List[str]:
    chans = [r for r in rows if r["case"].startswith("channel")]
    if not chans:
        return []
    out = [
        "",
        "## Channels: Publisher / Subscriber across processes",
        "",
        '`channel` is `fastshm.Publisher(..., overflow="block")` and `fastshm.Subscriber` '
        "on the native backend through the C-API binding (the default route); "
        '`channel-cffi` the same through the cffi binding (`backend="native-cffi"`; in '
        "C1-C3 in the full run only). "
        "`iceoryx2` is its Python bindings' publish/subscribe of a byte slice, lossless "
        "(no safe overflow, publisher backpressure `RetryUntilDelivered`, which spins), "
        "loaned samples written and read through their memory; its subscribers busy-poll "
        "`receive()` as its examples do, or (`iceoryx2-yield`) yield the core after each "
        "empty poll: each target takes the better of the two. `segment` is `fastshm.Segment` "
        "(store; wait + load_into), which keeps the newest message: lossy, a slow reader "
        "skips. `fastshm-queue` is `fastshm.Queue` (put; get_into). `socket` is a "
        "socketpair, sendall / recv_into of the whole message. Rings hold 4 messages "
        "(8 for the fan-out). Every message carries its number at both ends; `bad` counts "
        "those a consumer found lost, repeated or torn (lossy contenders: out of order). "
        "Producers send as fast as they can; rates count what the consumers had taken by "
        "the end of the seconds; CPU is each child's own (getrusage, all threads), the "
        "producer's per message sent, the consumers' per message taken. The floor is one "
        "C memcpy of the message in one process (each side copies once, on its own core): "
        '"× of the floor" is how many times fewer messages a contender delivers.',
    ]
    skipped = meta.get("channel_skipped") or {}
    if skipped:
        out.append("")
        out.append(
            "Left out of the channel cases here: "
            + "; ".join(f"`{k}` ({v})" for k, v in skipped.items())
            + "."
        )
    header = [
        "contender",
        "msgs/s",
        "× of the floor",
        "sent/s",
        "producer CPU µs per msg",
        "consumer CPU µs per msg",
        "CPU µs per delivered msg",
        "bad",
    ]

    fr = [r for r in chans if r["case"] == "channel frames" and r["contender"] != "memcpy-c"]
    if fr:
        ns, rate = _floor_rate(chans, "channel frames")
        out += [
            "",
            f"### C1: 1920×1080×3 frames, one producer to one consumer, unpaced "
            f"({fr[0]['seconds']:g} s each)",
            "",
            "The producer copies each frame in (`publish`, loan + memmove, `store`, `put`), "
            "the consumer copies each out into a ready buffer (`receive_into`, memmove, "
            "`load_into`, `get_into`, `recv_into`). `c-turns` and `c-ring` are the same "
            "stream between two C processes, a memcpy in and a memcpy out of a slot of a "
            "shared mapping, handed over by two spinning counters, through two slots "
            "taking turns (the fewest bytes in the caches) or four (either side runs ahead "
            "through the other's stalls): the floor of the whole stream is the faster. "
            "Runs take turns, repeat by repeat; the target compares the runs of each "
            "repeat, as the machine's memory speed drifts between repeats. "
            + (f"Floor: memcpy of a frame {human_ns(ns)}, {rate:,.0f} frames/s." if ns else ""),
            "",
        ]
        out += _table(header, [[r["contender"]] + _rate_cells(r, rate) for r in fr])
        out += _bad_notes(fr)

    big = [r for r in chans if r["case"] == "channel 1:1" and r["contender"] != "memcpy-c"]
    if big:
        ns, rate = _floor_rate(chans, "channel 1:1")
        out += [
            "",
            f"### C2: 16 MiB messages, one producer to one consumer ({big[0]['seconds']:g} s each)",
            "",
            "Copied: `publish(msg)` and `bytes(sample)`; the socketpair `sendall` and "
            "`recv_into` a ready buffer. In place: the message built in a `loan` (its "
            "number written at both ends), read in the `Sample` (both numbers read). "
            + (f"Floor of a copy: memcpy of 16 MiB {human_ns(ns)}, {rate:,.0f}/s." if ns else ""),
            "",
        ]
        out += _table(
            ["how"] + header,
            [
                [r["op"], r["contender"]] + _rate_cells(r, rate if r["op"] != "in place" else None)
                for r in big
            ],
        )
        out += _bad_notes(big)

    fan = [r for r in chans if r["case"] == "channel fan-out"]
    if fan:
        out += [
            "",
            f"### C3: 1 MiB messages to {fan[0]['subscribers']} subscriber processes, in place "
            f"({fan[0]['seconds']:g} s each)",
            "",
            "The publisher builds each message in a loan (its number at both ends); each "
            "subscriber reads the numbers in place. `msgs/s` is deliveries: messages times "
            "subscribers; five processes share the two cores. Consumer CPU is all "
            "subscribers' together, per delivery.",
            "",
        ]
        out += _table(
            [h for h in header if h != "× of the floor"],
            [[r["contender"]] + _rate_cells(r, None, floor=False) for r in fan],
        )
        out += _bad_notes(fan)

    rt = [r for r in chans if r["case"] == "channel round trip"]
    if rt:
        out += [
            "",
            "### C4: round trip through two channels",
            "",
            "One side publishes, the other copies the message into a ready buffer "
            "(`receive_into`) and publishes those bytes on a second channel; `segment` is "
            "the Segment's store, wait, `load_into` a ready buffer both ways (C-API "
            "binding), `segment-cffi` the same through cffi, beside "
            "`channel-cffi`. The floor is the C ping-pong (`c-spin`, "
            "`c-spin-yield`), the faster of the two.",
            "",
        ]
        out += _long_table(rt, floor_label("channel round trip", ""), ("size",), False)

    idles = [r for r in chans if r["case"] == "channel idle"]
    sm = [r for r in chans if r["case"] == "channel sample"]
    if idles or sm:
        out += ["", "### C5: a blocked receive, and receive + release against a copy", ""]
        if idles:
            out += [
                "A subscriber per route blocked in `receive()` with nothing published, its "
                "CPU read from /proc (schedstat of its threads) after 0.5 s to settle, then "
                "woken by a message.",
                "",
            ]
            out += _table(
                ["route", "seconds blocked", "CPU ms", "% of a core", "woken", "measured by"],
                [
                    [
                        r["contender"],
                        f"{r['seconds']:.2f}",
                        f"{r['cpu_s'] * 1e3:.2f}",
                        f"{r['core_percent']:.3f}",
                        "yes" if r["woke"] else "NO",
                        r["measured_by"],
                    ]
                    for r in idles
                ],
            )
            out.append("")
        if sm:
            cp = _fastest_copy(sm)
            out += [
                "16 MiB messages, in one process, timed call by call. `receive+release` is "
                "timed between copies of the sample (its lines and pages out of the caches, "
                "as in a program that uses the data); back to back, with nothing between. "
                "The copies are made from the sample: into a ready buffer (a memoryview slice "
                "assignment), `bytes(sample)`; `memcpy-c` is C's memcpy between two ready "
                "buffers.",
                "",
            ]
            body = []
            for r in sm:
                if "error" in r:
                    body.append([r["contender"], r["op"], f"failed: {r['error']}", "", ""])
                    continue
                body.append(
                    [
                        r["contender"],
                        r["op"],
                        human_ns(r["median_ns"]),
                        f"{human_ns(r['q1_ns'])}–{human_ns(r['q3_ns'])}",
                        f"{100 * r['median_ns'] / cp['median_ns']:.2f}%" if cp else "n/a",
                    ]
                )
            out += _table(
                [
                    "route",
                    "op",
                    "median",
                    "IQR",
                    f"share of the fastest copy ({cp['op'] if cp else 'n/a'})",
                ],
                body,
            )
    return out


# ---- plot ----


def channel_plot(rows: List[Row], plt: Any, title: str) -> Optional[Any]:
    """channels.png: one panel per case; None when no channel case ran."""
    import matplotlib.ticker

    chans = [r for r in rows if r["case"].startswith("channel") and "error" not in r]
    if not chans:
        return None
    panels: List[Tuple[str, List[Tuple[str, float]], str]] = []
    fr = [r for r in chans if r["case"] == "channel frames" and r.get("msgs_per_s") is not None]
    if fr:
        panels.append(
            (
                "C1: 1920×1080×3 frames, copied",
                [(r["contender"], r["msgs_per_s"]) for r in fr],
                "frames/s (higher is better)",
            )
        )
        panels.append(
            (
                "C1: CPU per delivered frame",
                [(r["contender"], r["cpu_ms_per_delivered"]) for r in fr],
                "ms, producer + consumer (lower is better)",
            )
        )
    big = [r for r in chans if r["case"] == "channel 1:1" and r.get("msgs_per_s") is not None]
    if big:
        panels.append(
            (
                "C2: 16 MiB one to one",
                [
                    (
                        f"{r['contender']} ({'in place' if r['op'] == 'in place' else 'copied'})",
                        r["msgs_per_s"],
                    )
                    for r in big
                ],
                "messages/s (higher is better)",
            )
        )
    fan = [r for r in chans if r["case"] == "channel fan-out" and r.get("msgs_per_s") is not None]
    if fan:
        panels.append(
            (
                f"C3: 1 MiB to {fan[0]['subscribers']} subscribers, in place",
                [(r["contender"], r["msgs_per_s"]) for r in fan],
                "deliveries/s (higher is better)",
            )
        )
    rt = [r for r in chans if r["case"] == "channel round trip"]
    for size in sorted({r["size"] for r in rt}):
        panels.append(
            (
                f"C4: round trip, {human_size(size)}",
                [(r["contender"], r["median_ns"] / 1e3) for r in rt if r["size"] == size],
                "µs (lower is better)",
            )
        )
    sm = [r for r in chans if r["case"] == "channel sample"]
    if sm:
        panels.append(
            (
                "C5: a 16 MiB sample",
                [
                    (
                        r["op"] if r["contender"] == "memcpy-c" else f"{r['contender']}: {r['op']}",
                        r["median_ns"] / 1e3,
                    )
                    for r in sm
                ],
                "µs (lower is better)",
            )
        )
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, bars, xlabel) in zip(axes.flat, panels):
        labels = [b[0] for b in bars]
        colors = [_color(lb.split(" (")[0]) or "#999999" for lb in labels]
        if name.startswith("C5"):
            colors = [
                (_color(lb.split(":")[0]) or "#d62728") if "receive" in lb else "#7f7f7f"
                for lb in labels
            ]
        vals = [b[1] for b in bars]
        ax.barh(labels, vals, color=colors)
        if max(vals) > 20 * max(min(vals), 1e-12):  # a log scale only where it is needed
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(f"Channels across processes: {title}", fontsize=10)
    fig.tight_layout()
    return fig
