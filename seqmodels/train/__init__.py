"""Training machinery shared by the recipes: DeepSpeed engine + loop (trainer), atomic
checkpoints (checkpoint), LR schedule, rank-0 logging (monitor), held-out evaluation (evaluation),
HF export and loading for inference (export), process-group set-up (distributed)."""
