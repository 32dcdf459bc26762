#!/bin/bash
# Second pass: the same steps, each with the machine's CPU use over it, a third
# open, and fills with 1 and 8 writer threads.
set -u
cd /work/proto
B=metadb/target/release/metadb
N=${N:-1000000}
R=results2
mkdir -p $R
step() { local name=$1; shift; echo "### $name $(date -u +%T)" | tee -a $R/all.log; flock /tmp/bench.lock ./measure.sh "$@" 2>$R/$name.err | tee $R/$name.log | tee -a $R/all.log; }
for e in ${ENGINES:-sled redb}; do
  D=data/$e
  rm -rf $D
  step $e-fill $B fill --engine $e --dir $D --n $N
  step $e-open1 $B open --engine $e --dir $D
  step $e-open2 $B open --engine $e --dir $D
  step $e-open3 $B open --engine $e --dir $D
  step $e-crash $B crash --engine $e --dir $D
  step $e-open-after-kill $B open --engine $e --dir $D --probe $N 20000
  step $e-open-after-kill-2 $B open --engine $e --dir $D
  if [ $e = redb ]; then
    step $e-crash-qr $B crash --engine $e --dir $D --quick-repair
    step $e-open-after-kill-qr $B open --engine $e --dir $D --probe $((N+20000)) 20000
    step $e-open-after-kill-qr-2 $B open --engine $e --dir $D
  fi
  rm -rf $D
done
for e in sled redb; do for t in 1 8; do
  D=data/t-$e-$t; rm -rf $D
  step $e-fill200k-threads$t $B fill --engine $e --dir $D --n 200000 --threads $t
  rm -rf $D
done; done
echo "### done $(date -u +%T)" | tee -a $R/all.log
