"""Python call cost for `cargo xtask bench python`: ns per call of a
stage function and of a non-stage function (both empty), and of the bare
loop, measured with perf_counter_ns; prints one JSON line."""
import json
import sys
import time


def bench_stage():
    pass


def bench_other():
    pass


def main():
    n = int(sys.argv[1])
    pc = time.perf_counter_ns
    r = range(n)
    t0 = pc()
    for _ in r:
        pass
    t1 = pc()
    for _ in r:
        bench_other()
    t2 = pc()
    for _ in r:
        bench_stage()
    t3 = pc()
    print(json.dumps({"loop_ns": (t1 - t0) / n, "other_ns": (t2 - t1) / n, "stage_ns": (t3 - t2) / n}))


main()
