"""Benchmark and load tooling: a closed-loop load driver, the empty-call ceiling, the classic
designs, and Locust scenarios (loadtests/locust) run end to end by loadtests.scenarios."""
