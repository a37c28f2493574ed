"""Benchmark and load tooling, one instrument per question: the closed-loop driver
(driver.py) for the empty-call ceiling, `make bench` and the knee; Locust (locust/) for the
scenarios, reported from Locust's own statistics; the invariants in SQL, after every run."""
