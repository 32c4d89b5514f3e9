"""The callmesh node process: its adapters, the `callmesh` command and the local cluster."""
