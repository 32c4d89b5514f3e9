"""Traffic generators and benchmarks (`callmesh bench`)."""
