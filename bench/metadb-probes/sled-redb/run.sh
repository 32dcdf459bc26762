#!/bin/bash
# Runs the whole comparison; each step alone under the shared lock.
set -u
cd /work/proto
B=metadb/target/release/metadb
N=${N:-1000000}
R=results
step() { local name=$1; shift; echo "### $name $(date -u +%T)" | tee -a $R/all.log; flock /tmp/bench.lock "$@" 2>$R/$name.err | tee $R/$name.log | tee -a $R/all.log; }
for e in ${ENGINES:-sled redb}; do
  D=data/$e
  rm -rf $D
  step $e-fill $B fill --engine $e --dir $D --n $N
  step $e-open1 $B open --engine $e --dir $D
  step $e-open2 $B open --engine $e --dir $D
  step $e-crash $B crash --engine $e --dir $D
  step $e-open-after-kill $B open --engine $e --dir $D --probe $N 20000
  step $e-open-after-kill-2 $B open --engine $e --dir $D
  if [ $e = redb ]; then
    step $e-crash-qr $B crash --engine $e --dir $D --quick-repair
    step $e-open-after-kill-qr $B open --engine $e --dir $D --probe $((N+20000)) 20000
    step $e-open-after-kill-qr-2 $B open --engine $e --dir $D
  fi
done
echo "### done $(date -u +%T)" | tee -a $R/all.log
