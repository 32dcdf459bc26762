#!/bin/bash
# Runs one command (already under the lock) and prints the machine's busy CPU
# seconds over it, so that CPU used by processes other than the measured one
# (busy - process_cpu_s) can be told.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
b0=$(busy); t0=$(date +%s.%N)
"$@"; rc=$?
b1=$(busy); t1=$(date +%s.%N)
echo "machine_busy_cpu_s=$(echo "($b1-$b0)/$(getconf CLK_TCK)" | bc -l | cut -c1-6) wall_s=$(echo "$t1-$t0" | bc -l | cut -c1-6) rc=$rc load=$(cut -d' ' -f1-3 /proc/loadavg)"
