"""Simulated partners for development, tests and load runs: a warehouse, carriers and a
payment provider as real HTTP servers, with fault knobs settable at run time
(simulators/faults.py, and the provider's own in simulators/payment_faults.py)."""
