"""Benchmark tooling: a closed-loop load driver, the empty-call ceiling and the classic designs."""
