"""The built-in engine's weight-only int8 layer (variants.causal_lm.Int8PackLinear), without a model file."""

from __future__ import annotations

import torch

from maas_workloads.variants.causal_lm import Int8PackLinear


def test_a_weight_not_64_byte_aligned_is_computed_like_an_aligned_one() -> None:
    """A weight loaded from safetensors sits wherever the tensors before it end: PyTorch's kernel
    crashed the process on one 1 byte off 64-byte alignment before the layer copied its weights."""
    torch.manual_seed(0)
    storage = torch.randint(-127, 128, (128 * 128 + 64,), dtype=torch.int8)
    scale = torch.rand(128, dtype=torch.bfloat16) / 100
    x = torch.randn(3, 64, 128)
    for offset in (1, 8, 56):
        weight = storage[offset : offset + 128 * 128].view(128, 128)
        assert weight.data_ptr() % 64 != 0
        expected = x @ (weight.float() * scale.float().unsqueeze(1)).T
        result = Int8PackLinear(weight, scale, None)(x)
        assert result.shape == (3, 64, 128) and result.dtype == torch.float32
        # bfloat16 activations: 8 bits of mantissa, so 1% of the output's scale.
        assert torch.allclose(result, expected, atol=0.01 * float(expected.abs().max()))
