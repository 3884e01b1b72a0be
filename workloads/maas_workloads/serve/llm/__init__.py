"""The OpenAI-compatible server for causal language models (vLLM's HTTP contract)."""
