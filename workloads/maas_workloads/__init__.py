"""Code that runs inside the pods: the training launcher and trainer, and the inference server."""
