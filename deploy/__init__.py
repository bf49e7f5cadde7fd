"""Deployment tooling: the Envoy config renderer and `make validate`."""
