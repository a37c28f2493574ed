"""Simulated partners for development, tests and load runs: a warehouse and carriers as
real HTTP servers, with fault knobs settable at run time (simulators/faults.py)."""
