"""fmsweep's benchmarks, each run as a module: `python -m fmsweep.bench` (a training epoch against the practical's
pipeline, or packing with `--pack K`), `.startup` (the command to its first batch or first job), `.search` (how busy a
search keeps its slots) and `.status` (`fmsweep status` on a 1,000-job sweep). They ship with the package so that a
user measures the machine where the sweeps run, from an installed fmsweep."""
