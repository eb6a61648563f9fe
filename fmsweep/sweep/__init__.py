"""Sweeps of runs: the sweep's record on disk, the checks before launch, packing, launching, the live status and
`fmsweep status`, the run-dir lock, and the Optuna search. A run itself (fmsweep.train and what it uses) knows
nothing of sweeps but its lock."""
