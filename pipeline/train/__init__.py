"""Training: the job's config, the per-worker loop, DDP/DeepSpeed engines, the driver and its results, Tune."""
