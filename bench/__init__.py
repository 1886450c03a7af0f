"""Benchmarks of the watchdog: cycle cost, detection delay, recovery throughput, footprint.

Run with `make bench` (or `.venv/bin/python -m bench [--quick] [--only NAME]`). Every
scenario prints figures next to its target and never asserts on timings; the figures end
up in one table on stdout and in `bench/results/latest.json`.
"""
