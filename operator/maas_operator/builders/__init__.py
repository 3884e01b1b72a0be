"""Pure functions from a validated spec and an identity to Kubernetes manifests; no I/O."""
