"""The inference server run by ModelService pods: `python -m maas_workloads.serve`."""
