"""Chaos runs: randomized fault schedules against a local cluster under load, and a checker of
DESIGN.md's invariants over the recorded history.

- `schedule`: `plan(seed, topology, duration)` -> `Schedule` of faults (pure)
- `nemesis`: applies a schedule to a `LocalCluster`
- `load`: a bounded load driver through the public HTTP API
- `history` / `collect`: the recorded history as values, and how it is fetched after a run
- `convergence`: `RegistryWatch`, I4's figure (registries equal how long after the last heal)
- `checker`: `check(history)` -> violations of I1-I4 and of a quiet end (pure)
- `runner`: one or more schedules end to end (`callmesh chaos`)
"""
