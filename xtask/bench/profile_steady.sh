#!/bin/bash
# The profiler's steady-state cost (BENCHMARKS.md), as root, after
# `cargo xtask bench profile` built the release binaries: agent CPU
# (utime+stime ticks of /proc/PID/stat between t=5 s and t=25 s of a 28 s
# run, CLK_TCK 100) and the BPF run time of the profile_* and stage_*
# programs over the same 20 s (kernel.bpf_stats_enabled), on the release
# demo pipeline (2 threads) with its nine stages, per --profile setting.
cd "$(dirname "$0")/../.." || exit 1
R=target/release
$R/demo-pipeline --frames 0 --threads 2 >/dev/null & DP=$!
sleep 1
ST=""; for s in process_frame decode preprocess infer infer_layer postprocess refine track publish; do ST="$ST --stage $s=$PWD/$R/demo-pipeline:$s"; done
STATS=$(cat /proc/sys/kernel/bpf_stats_enabled)
trap 'sysctl -qw kernel.bpf_stats_enabled=$STATS' EXIT
sysctl -qw kernel.bpf_stats_enabled=1
bpfns() { bpftool prog show | awk -v p="$1" '{n="";t=0;for(i=1;i<=NF;i++){if($i=="name")n=$(i+1); if($i=="run_time_ns")t=$(i+1)}; if (index(n,p)==1) s+=t} END {printf "%d\n", s}'; }
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for extra in "" "--profile 99 --no-off-cpu" "--profile 99" "--profile 999 --no-off-cpu" "--profile 999"; do
  $R/adeline-trace run --no-api --no-spans -o /dev/null -p $DP --duration 28s $ST $extra >/dev/null 2>&1 & AG=$!
  sleep 5; a0=$(ticks $AG); p0=$(bpfns profile_); s0=$(bpfns stage_)
  sleep 20; a1=$(ticks $AG); p1=$(bpfns profile_); s1=$(bpfns stage_)
  echo "[$extra] agent $(( (a1-a0) )) ticks/20s = $(echo "scale=3; ($a1-$a0)/20" | bc)% ; profiler bpf $(echo "scale=3; ($p1-$p0)/200000000" | bc)% ; stage bpf $(echo "scale=3; ($s1-$s0)/200000000" | bc)% ; load $(cut -d' ' -f1 /proc/loadavg)"
  wait $AG
done
kill $DP
