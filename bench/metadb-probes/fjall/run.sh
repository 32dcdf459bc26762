#!/bin/bash
# usage: run.sh NAME args...   (runs the binary under the shared bench lock, logs to results/NAME.txt)
name=$1; shift
B=/work/proto/metadb-fjall/target/release/metadb-fjall
{ echo "== $(date -u +%T) $*"; flock /tmp/bench.lock /usr/bin/time -f "time: %e s wall, %U user, %S sys, maxrss %M KiB" $B "$@"; echo "rc=$?"; } > /work/proto/metadb-fjall/results/$name.txt 2>&1
