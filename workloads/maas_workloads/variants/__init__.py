"""Optimized variants of a published model: converted after training, measured on the job's own
validation split, and listed in the artifact's manifest next to the full model (artifact.Variant).

`tensor` converts tensor models (int8, fp16, bf16, onnx), `causal_lm` causal language models
(weight-only int8); `gate` decides, from `spec.output.maxAccuracyDrop`, which are published.
"""
