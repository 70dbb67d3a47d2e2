"""AccessPoint API and its pure core: rendering, planning, traffic compilation, rollout, status.

Nothing in this package performs I/O or reads a clock; callers pass time in.
"""
