"""The config groups of fmsweep, as a package so that Hydra finds them in an installed fmsweep (pkg://fmsweep.conf)."""
