"""`python -m fmsweep.bench`: the training benchmark (fmsweep.bench.step)."""

from fmsweep.bench.step import main

main()
