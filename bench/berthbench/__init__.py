"""berthbench: the benchmark harness behind bench/run (see "Performance" in the README)."""
