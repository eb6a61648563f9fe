"""Sweeps of runs: the sweep's record on disk, the checks before launch, packing, launching, the live status and
`fmsweep status`, the run-dir lock, and the Optuna search. A run itself (fmsweep.train and what it uses) knows
nothing of sweeps but its lock, its pack job (packing), and its search trial (trial, with where the study lives:
storage); the results know only where a study lives and how a search's values read (storage, space).
tests/test_imports.py keeps these layers."""
