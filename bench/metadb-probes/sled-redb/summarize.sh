#!/bin/bash
# One line per step: the figures the report uses.
for R in results results2; do
  echo "== $R"
  for f in $R/*.log; do
    [ "$(basename $f)" = all.log ] && continue
    n=$(basename $f .log)
    line=$(grep -hoE "objects_per_s=[0-9]+|open_wall_ms=[0-9.]+|open_cpu_ms=[0-9.]+|repair_callbacks=[0-9]+|p50_us=[0-9.]+|p99_us=[0-9.]+|close_ms=[0-9.]+|^du=[0-9.]+MiB|probe: [0-9]+|process_cpu_s=[0-9.]+|machine_busy_cpu_s=[0-9.]+|wall_s=[0-9.]+|mean_commit_ms=[0-9.]+|mean_wait_ms=[0-9.]+|max_commit_ms=[0-9.]+|mean_us=[0-9.]+" $f | tr '\n' ' ')
    rss=$(grep -oE "VmRSS=[0-9]+MiB VmHWM=[0-9]+MiB" $f | sed 's/VmRSS=//;s/ VmHWM=/\//' | tr '\n' ' ')
    echo "$n: $line | rss/hwm: $rss"
  done
done
