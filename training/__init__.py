"""Training: the S3-DiT model, the flow-matching objective, the shard loader, encoders and the loop (torch, no Ray)."""
