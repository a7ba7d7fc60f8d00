"""Training of the cascade on Ray Train: the worker loops (`vae`, `teacher`, and `diffusion` for both LDMs), the
shared harness (`loop`, `frames`), data (`data`, `latents`), checkpoints, metrics, and the driver (`runner`)."""
