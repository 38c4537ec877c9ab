#!/usr/bin/env python3
"""Writes the seeds of the event_decode fuzz target: ring-buffer records
(adeline-trace-common SpanRecord 56 bytes, GaugeRecord 32, MapRecord 48;
native little-endian, repr(C)) as the target reads them, each after a
length byte. The values are those of a demo-pipeline run: stage 0 = frame
root (process_frame), 1 = infer, 2 = track; gauge 0 = tracks. A unit test
(adeline-trace/src/events.rs) checks that every seed decodes."""
import os
import struct

KIND_SPAN, KIND_GAUGE, KIND_MAP = 1, 2, 3
MAP_OP_MMAP, MAP_OP_MUNMAP = 1, 2
PID, TID = 41870, 41871
T0 = 9_812_345_678_901  # bpf_ktime_get_ns of the first frame


def span(stage, start, dur, self_ns, frame, depth, pid=PID, tid=TID):
    return struct.pack("<IIIIQQQQII", KIND_SPAN, stage, pid, tid, start, dur, self_ns, frame, depth, 0)


def gauge(g, ts, value, pid=PID, tid=TID):
    return struct.pack("<IIIIQq", KIND_GAUGE, g, pid, tid, ts, value)


def mapping(op, stage, ts, nbytes, frame, pid=PID, tid=TID):
    return struct.pack("<IIIIIIQQQ", KIND_MAP, op, pid, tid, stage, 0, ts, nbytes, frame)


def frame(t, n):
    """One frame: infer (600 us) then track (80 us) inside process_frame."""
    infer = span(1, t + 20_000, 600_000 + 1_000 * n, 600_000 + 1_000 * n, t, 1)
    track = span(2, t + 650_000, 80_000, 80_000, t, 1)
    tracks = gauge(0, t + 730_000, 7 + n % 3)
    root = span(0, t, 1_200_000 + 1_000 * n, 520_000, t, 0)
    return [infer, track, tracks, root]


def write(name, records):
    data = b"".join(bytes([len(r)]) + r for r in records)
    path = os.path.join(os.path.dirname(__file__), "..", "event_decode", name)
    with open(path, "wb") as f:
        f.write(data)


assert len(span(0, 0, 0, 0, 0, 0)) == 56 and len(gauge(0, 0, 0)) == 32 and len(mapping(0, 0, 0, 0, 0)) == 48
os.makedirs(os.path.join(os.path.dirname(__file__), "..", "event_decode"), exist_ok=True)
write("one_frame", frame(T0, 0))
write("frames_2s", [r for i in range(40) for r in frame(T0 + i * 50_000_000, i)])
write("memory", [mapping(MAP_OP_MMAP, 1, T0 + 30_000, 4 << 20, T0),
                 mapping(MAP_OP_MUNMAP, 1, T0 + 590_000, 4 << 20, T0),
                 mapping(MAP_OP_MMAP, 0xFFFFFFFF, T0 + 900_000, 65536, 0)] + frame(T0, 1))
# What the agent must survive: a stage and a gauge not in the plan, a
# truncated record, an unknown kind.
write("odd", [span(7, T0, 1000, 1000, 0, 0), gauge(3, T0, -1), span(1, T0, 5, 5, 0, 0)[:40],
              struct.pack("<I", 9) + bytes(20)] + frame(T0, 2))
