"""Thin kopf handlers; importing this package registers all of them."""

from maas_operator.handlers import lifecycle, modelservice, trainingjob

__all__ = ["lifecycle", "modelservice", "trainingjob"]
