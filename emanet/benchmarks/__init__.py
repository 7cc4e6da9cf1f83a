"""Measurements of speed, memory, FLOPs and robustness, and the records and tables that keep
them (the scripts in ``scripts/`` parse arguments and call these)."""
