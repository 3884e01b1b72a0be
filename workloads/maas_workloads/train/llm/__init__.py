"""The built-in trainer's causal-language-model task: data, tokenizer, model, sharding, loop, checkpoints, artifact."""
