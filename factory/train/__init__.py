"""Training of the cascade on Ray Train: one worker loop per stage (vae, teacher, anatomy, motion), shared
harness (`loop`), data (`data`, `latents`), checkpoints, metrics, and the driver (`runner`)."""
