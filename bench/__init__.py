"""Benchmark: mirror against rsync's daemon on loopback (`make bench`, `python -m bench`).

Modules: `datasets` (seeded trees on tmpfs), `trees` (scan and compare trees), `daemons`
(start, watch and stop the servers), `runner` (timed, verified client runs), `report` (the
table and `bench/RESULTS.md`), `probes` (baseline measurements for `bench/NOTES.md`).
"""
