"""Targets, the markdown table, the JSON file and the plots."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

KIB, MIB = 1024, 1024 * 1024
COLORS = {
    "native": "#d62728",
    "python": "#1f77b4",
    "stdlib": "#2ca02c",
    "mmap": "#9467bd",
    "memcpy": "#7f7f7f",
    "memcpy-2slot": "#bcbd22",
    "native-bare": "#ff9896",
    "stdlib-poll": "#2ca02c",
    "pipe": "#ff7f0e",
    "queue": "#8c564b",
    "socket": "#17becf",
}


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


def _bare_pair(rows: List[Dict[str, Any]], pair: Dict[str, float]) -> str:
    """The two C calls of a 64 B store and load through cffi, nothing around
    them: a floor no wrapper goes under."""
    st = _med(rows, case="copy", op="store", contender="native-bare", size=64)
    lo = _med(rows, case="copy", op="load_into", contender="native-bare", size=64)
    if not (st and lo):
        return ""
    return (
        f"; the bare cffi calls fshm_store + fshm_load alone take {human_ns(st + lo)} "
        f"({pair['stdlib'] / (st + lo):.2f}x of stdlib's pair)"
    )


def targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each target's verdict and the numbers it rests on, from this run."""
    out = []

    # T1: for every size >= 64 KiB measured.
    big = sorted({r["size"] for r in rows if r["case"] == "copy" and r["size"] >= 64 * KIB})
    checks: List[Tuple[str, int, float]] = []
    for size in big:
        for op, floor in (("store", "memcpy"), ("load_into", "memcpy"), ("load", "memcpy")):
            nat = _med(rows, case="copy", op=op, contender="native", size=size)
            ref = _med(rows, case="copy", op=op, contender=floor, size=size)
            if nat and ref:
                checks.append((op, size, ref / nat))  # throughput ratio native / floor
    if checks:
        worst = min(checks, key=lambda c: c[2])
        detail = "; ".join(f"{op} {human_size(size)} {ratio:.2f}x" for op, size, ratio in checks)
        # What a bare C call reaches at the worst point: the part of the gap no
        # wrapper can close.
        bare_op = "store" if worst[0] == "store" else "load_into"
        bare = _med(rows, case="copy", op=bare_op, contender="native-bare", size=worst[1])
        ref = _med(rows, case="copy", op=bare_op, contender="memcpy", size=worst[1])
        if bare and ref:
            fn = "fshm_store" if bare_op == "store" else "fshm_load"
            detail += (
                f". Floor at {human_size(worst[1])}: the bare cffi call of {fn} alone "
                f"reaches {ref / bare:.2f}x memcpy"
            )
        out.append(
            {
                "id": "T1",
                "goal": ">= 64 KiB: native store and load_into >= 0.9x memcpy "
                "throughput, load >= 0.9x bytes(memoryview)",
                "met": worst[2] >= 0.9,
                "value": f"worst {worst[0]} at {human_size(worst[1])}: {worst[2]:.2f}x",
                "detail": detail,
                "ratios": [list(c) for c in checks],
            }
        )

    # T2: 64 B store + load pair.
    pair = {}
    for c in ("native", "python", "stdlib"):
        s = _med(rows, case="copy", op="store", contender=c, size=64)
        lo = _med(rows, case="copy", op="load", contender=c, size=64)
        if s and lo:
            pair[c] = s + lo
    if len(pair) == 3:
        vs_py = pair["python"] / pair["native"]
        vs_std = pair["stdlib"] / pair["native"]
        out.append(
            {
                "id": "T2",
                "goal": "64 B store+load: native >= 2x faster than python and "
                ">= 1.2x faster than stdlib framing",
                "met": vs_py >= 2 and vs_std >= 1.2,
                "value": f"{vs_py:.2f}x vs python, {vs_std:.2f}x vs stdlib",
                "detail": ", ".join(f"{c} {human_ns(v)}" for c, v in pair.items())
                + _bare_pair(rows, pair),
                "pair_ns": pair,
            }
        )

    # T3: attach + close.
    nat = _med(rows, case="open", op="attach+close", contender="native")
    std = _med(rows, case="open", op="attach+close", contender="stdlib")
    if nat and std:
        out.append(
            {
                "id": "T3",
                "goal": "attach+close: native >= 5x faster than stdlib SharedMemory(name)",
                "met": std / nat >= 5,
                "value": f"{std / nat:.2f}x",
                "detail": f"native {human_ns(nat)}, stdlib {human_ns(std)}"
                + (
                    f"; the same system calls from Python's mmap module (open, fstat, mmap, "
                    f"close, munmap, no header read): {human_ns(mm)}, so 5x would need "
                    f"{human_ns(std / 5)}"
                    if (mm := _med(rows, case="open", op="attach+close", contender="mmap"))
                    else ""
                ),
            }
        )

    # T4: round trips.
    parts, met, have = [], True, False
    for size, need in ((64, 10), (MIB, 3)):
        nat = _med(rows, case="round trip", contender="native", size=size)
        pipe = _med(rows, case="round trip", contender="pipe", size=size)
        if nat and pipe:
            have = True
            met = met and pipe / nat >= need
            parts.append(
                f"{human_size(size)}: {pipe / nat:.2f}x (need {need}x; "
                f"native {human_ns(nat)}, pipe {human_ns(pipe)})"
            )
    if have:
        out.append(
            {
                "id": "T4",
                "goal": "round trip via store/wait: >= 10x faster than Pipe at 64 B, "
                ">= 3x at 1 MiB",
                "met": met,
                "value": "; ".join(parts),
                "detail": "",
            }
        )

    # T5: view at the smallest and largest size.
    views = sorted(
        (r["size"], r["median_ns"])
        for r in rows
        if r["case"] == "copy" and r["op"] == "view" and r["contender"] == "native"
    )
    if len(views) >= 2:
        (s0, t0), (s1, t1) = views[0], views[-1]
        ratio = max(t0, t1) / min(t0, t1)
        out.append(
            {
                "id": "T5",
                "goal": "view() time at 8 B and 64 MiB within 2x",
                "met": ratio <= 2,
                "value": f"{ratio:.2f}x ({human_size(s0)} {human_ns(t0)}, "
                f"{human_size(s1)} {human_ns(t1)})",
                "detail": "",
            }
        )
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
        f"compiled with `{m['cflags']}`).",
        "",
        "Load average (1, 5, 15 min) before the run "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_before"])
        + "; after "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_after"])
        + ". On two cores, other work competes with the cases across processes.",
        "",
        "Figures are medians over interleaved repetitions; the spread is in results.json "
        "(min, max, quartiles).",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "goal", "verdict", "measured"],
        [
            [v["id"], v["goal"], "**met**" if v["met"] else "**not met**", v["value"]]
            for v in verdicts
        ],
    )
    for v in verdicts:
        if v.get("detail"):
            out.append(f"\n{v['id']}: {v['detail']}")

    copy = [r for r in rows if r["case"] == "copy"]
    if copy:
        out += ["", "## Copy path, one process (time per call; GB/s)", ""]
        for op in ("store", "load", "load_into", "view"):
            sub = [r for r in copy if r["op"] == op]
            cs = _contenders(sub)
            sizes = sorted({r["size"] for r in sub})
            body = []
            for size in sizes:
                line = [human_size(size)]
                for c in cs:
                    r = _find(sub, contender=c, size=size)
                    if r is None:
                        line.append("")
                    elif op == "view":
                        line.append(human_ns(r["median_ns"]))
                    else:
                        line.append(f"{human_ns(r['median_ns'])} ({r['throughput_GBps']:.2f})")
                body.append(line)
            out += [f"### {op}", ""] + _table(["size"] + cs, body) + [""]
        out.append(
            "`memcpy` is slice assignment between two ready buffers; for `load` it is "
            "`bytes(memoryview)`, making a new bytes object of that size. "
            "`native-bare` is the C core's `fshm_store` / `fshm_load` called straight "
            "through cffi with every argument ready: the floor under any wrapper. "
            "`memcpy-2slot` copies into two buffers in turn, as a store alternates between "
            "the two slots."
        )

    opens = [r for r in rows if r["case"] == "open"]
    if opens:
        cs = _contenders(opens)
        out += ["", "## Opening a 1 KiB segment (time per call)", ""]
        body = []
        for op in ("create+unlink", "attach+close", "open-or-create existing"):
            body.append(
                [op]
                + [
                    human_ns(r["median_ns"]) if (r := _find(opens, op=op, contender=c)) else ""
                    for c in cs
                ]
            )
        out += _table(["operation"] + cs, body)

    rt = [r for r in rows if r["case"] == "round trip"]
    if rt:
        cs = _contenders(rt)
        out += ["", "## Round trip between two processes (median; IQR)", ""]
        body = []
        for size in sorted({r["size"] for r in rt}):
            line = [human_size(size)]
            for c in cs:
                r = _find(rt, contender=c, size=size)
                line.append(
                    f"{human_ns(r['median_ns'])} ({human_ns(r['q1_ns'])}–{human_ns(r['q3_ns'])})"
                    if r
                    else ""
                )
            body.append(line)
        out += _table(["size"] + cs, body)

    ow = [r for r in rows if r["case"] == "one way"]
    if ow:
        cs = _contenders(ow)
        out += [
            "",
            "## One writer, N readers: messages delivered per reader per second (GB/s)",
            "",
            "fastshm and stdlib-poll keep the newest message: a reader slower than the "
            "writer skips messages, and only those it loaded count.",
            "",
        ]
        body = []
        for size, n in sorted({(r["size"], r["readers"]) for r in ow}, key=lambda x: (x[1], x[0])):
            line = [human_size(size), str(n)]
            for c in cs:
                r = _find(ow, contender=c, size=size, readers=n)
                line.append(f"{r['msgs_per_s']:,.0f} ({r['throughput_GBps']:.2f})" if r else "")
            body.append(line)
        out += _table(["size", "readers"] + cs, body)

    fr = [r for r in rows if r["case"] == "frames"]
    if fr:
        out += [
            "",
            f"## 1920×1080×3 frames to two consumers ({fr[0]['seconds']:.0f} s each)",
            "",
            "The producer sends at most 240 frames/s, as a camera would (a channel that "
            "blocks it makes it drop frames); fastshm consumers take the newest "
            "frame (load_into a ready numpy array), Pipe consumers recv_bytes_into one, "
            "Queue consumers get a pickled array.",
            "",
        ]
        body = [
            [
                r["contender"],
                f"{r['fps_per_consumer']:.0f}",
                f"{r['sent_fps']:.0f}",
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_ms_per_delivered_frame']:.2f}",
            ]
            for r in fr
        ]
        out += _table(
            [
                "contender",
                "fps per consumer",
                "frames sent/s",
                "CPU s (3 processes)",
                "CPU ms per delivered frame",
            ],
            body,
        )
    out += [
        "",
        "Plots: copy_path.png (main), round_trip.png, open_costs.png, one_way.png, frames.png.",
        "",
    ]
    return "\n".join(out)


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
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        names = [r["contender"] for r in fr]
        colors = [COLORS.get(n) for n in names]
        a1.bar(names, [r["fps_per_consumer"] for r in fr], color=colors)
        a1.set_ylabel("frames per second per consumer")
        a2.bar(names, [r["cpu_ms_per_delivered_frame"] for r in fr], color=colors)
        a2.set_ylabel("CPU ms per delivered frame")
        fig.suptitle(f"1920×1080×3 frames to two consumers: {title}", fontsize=10)
        fig.tight_layout()
        save(fig, "frames.png")
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
