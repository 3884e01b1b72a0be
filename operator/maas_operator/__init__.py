"""Kubernetes operator for TrainingJob and ModelService (maas.dev/v1alpha1)."""
