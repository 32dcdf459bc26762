#!/bin/bash
# Third sample of the fills and the first open after them.
set -u
cd /work/proto
B=metadb/target/release/metadb
R=results3; mkdir -p $R
step() { local name=$1; shift; echo "### $name $(date -u +%T)" | tee -a $R/all.log; flock /tmp/bench.lock ./measure.sh "$@" 2>$R/$name.err | tee $R/$name.log | tee -a $R/all.log; }
for e in sled redb; do
  D=data/$e; rm -rf $D
  step $e-fill $B fill --engine $e --dir $D --n 1000000
  step $e-open1 $B open --engine $e --dir $D
  step $e-open2 $B open --engine $e --dir $D
  rm -rf $D
done
echo "### done $(date -u +%T)" | tee -a $R/all.log
