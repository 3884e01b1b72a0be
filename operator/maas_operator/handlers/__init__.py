"""Thin kopf handlers; importing this package registers all of them."""

from maas_operator.handlers import leadership, lifecycle, modelservice, trainingjob

__all__ = ["leadership", "lifecycle", "modelservice", "trainingjob"]
