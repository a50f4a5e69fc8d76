#!/usr/bin/env python3
"""Sweep answering-machine detector settings offline, on the tune set only.

`outdial-bench amd --set tune --dump FILE ...` writes each sample's per-frame measures (the
VAD's decision, the frame level, the beep detector's flags). This replays the rules of
`crates/agent/src/amd.rs` on them (the same arithmetic; the dump rounds levels to 0.1 dB, so a
borderline frame can flip and a figure differ from the bench's by a sample or two) for every combination of the settings given, and prints those that meet
the limits, best detection first. Plain Python 3, no packages.

    outdial-bench amd --set tune --calls 200 --seed 2 --dump /tmp/tune2.jsonl
    scripts/amd_sweep.py /tmp/tune1.jsonl /tmp/tune2.jsonl /tmp/tune3.jsonl \
        --grid "greeting_ms=2200,2500,2800 human_silence_ms=450,500,550 continuous_ms=0,1500,1700"

Never run it on a held-out dump: those figures are only for checking the choice made here.
"""
import argparse
import itertools
import json
import math

FRAME_MS = 20
SILENCE_DB = 20.0
WINDOW = 1500 // FRAME_MS

SHIPPED = dict(
    rank=3,
    above_floor_db=4.0,
    min_beep_ms=160,
    greeting_ms=2500,
    human_silence_ms=500,
    # The binary's greeting_ms * continuous_percent / 100.
    continuous_ms=1700,
    continuous_gap_ms=350,
    min_speech_share=0.3,
    min_speech_ms=160,
    click_gap_ms=200,
    max_ms=6000,
    beep_watch_ms=30000,
)


def speech_frames(s, rank, above_db):
    """The detector's speech decision per frame: the VAD, and above the noise floor."""
    recent, smoothed, out = [], [], []
    for vad, level in zip(s["vad"], s["level"]):
        recent = (recent + [level])[-3:]
        if len(recent) == 3:
            smoothed = (smoothed + [sorted(recent)[1]])[-WINDOW:]
        if not smoothed:
            out.append(False)
            continue
        silent = sum(1 for x in smoothed if x < SILENCE_DB)
        audible = sorted(x for x in smoothed if x >= SILENCE_DB)
        if silent >= rank:
            floor = audible[0] if audible else SILENCE_DB
        else:
            kept = audible[: rank - silent]
            floor = kept[-1] if kept else SILENCE_DB
        out.append(bool(vad) and level - floor >= above_db)
    return out


def beep_at(s, min_beep_ms):
    run = 0
    for i, tone in enumerate(s["tone"]):
        run = run + FRAME_MS if tone else 0
        if tone and run >= min_beep_ms:
            return (i + 1) * FRAME_MS
    return None


def verdict(s, speech, c):
    beep = beep_at(s, c["min_beep_ms"])
    onset, last, speech_ms, longest_gap, first = None, 0, 0, 0, None
    at = 0
    for i, sp in enumerate(speech):
        at = (i + 1) * FRAME_MS
        if beep is not None and at >= beep:
            return "machine", at
        if sp:
            if onset is None:
                onset = at - FRAME_MS
            else:
                gap = at - FRAME_MS - last
                if c["click_gap_ms"] and speech_ms < c["min_speech_ms"] and gap >= c["click_gap_ms"]:
                    onset, speech_ms, longest_gap = at - FRAME_MS, 0, 0
                else:
                    longest_gap = max(longest_gap, gap)
            last, speech_ms = at, speech_ms + FRAME_MS
        if onset is not None:
            span = last - onset
            if at - last >= c["human_silence_ms"] and speech_ms >= c["min_speech_ms"]:
                first = ("human", at)
                break
            dense = speech_ms >= c["min_speech_share"] * span
            if dense and span >= c["greeting_ms"]:
                return "machine", at
            if (dense and c["continuous_ms"] and span >= c["continuous_ms"]
                    and longest_gap < c["continuous_gap_ms"]):
                return "machine", at
        if at >= c["max_ms"]:
            first = ("unknown", at)
            break
    first = first or ("unknown", at)
    if beep is not None and beep <= c["beep_watch_ms"]:
        return "machine", beep
    return first


def quantile(v, q):
    v = sorted(v)
    return v[max(1, min(len(v), math.ceil(q * len(v)))) - 1] if v else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--grid", default="", help='"key=a,b key=c ..." over the SHIPPED keys')
    ap.add_argument("--max-people-pct", type=float, default=1.0)
    ap.add_argument("--max-p50-ms", type=int, default=2500)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    samples = [json.loads(l) for f in args.dumps for l in open(f)]
    grid = {k: [SHIPPED[k]] for k in SHIPPED}
    for item in args.grid.split():
        k, vs = item.split("=")
        grid[k] = [type(SHIPPED[k])(float(v)) for v in vs.split(",")]
    cache, rows = {}, []
    for values in itertools.product(*grid.values()):
        c = dict(zip(grid, values))
        key = (c["rank"], c["above_floor_db"])
        if key not in cache:
            cache[key] = [speech_frames(s, *key) for s in samples]
        found = people = 0
        times = []
        for s, speech in zip(samples, cache[key]):
            v, at = verdict(s, speech, c)
            times.append(at)
            if s["truth"] == "Machine":
                found += v == "machine"
            else:
                people += v == "machine"
        machines = sum(1 for s in samples if s["truth"] == "Machine")
        det = 100 * found / machines
        fp = 100 * people / (len(samples) - machines)
        rows.append((det, fp, quantile(times, 0.5), c))
    ok = [r for r in rows if r[1] <= args.max_people_pct and r[2] <= args.max_p50_ms]
    ok.sort(key=lambda r: (-r[0], r[1], r[2]))
    print(f"{len(rows)} settings, {len(ok)} within the limits")
    for det, fp, p50, c in ok[: args.top]:
        changed = {k: v for k, v in c.items() if len(grid[k]) > 1}
        print(f"machines {det:.1f} %  people {fp:.2f} %  p50 {p50} ms  {changed}")


if __name__ == "__main__":
    main()
