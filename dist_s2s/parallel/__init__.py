"""Parallelism wraps the model: the model's own layers cut into DeepSpeed pipeline stages."""
