"""Training: the paper's SGD recipe, checkpoints with exact resume, MLflow tracking."""
