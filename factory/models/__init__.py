"""The networks of the cascade: dual-decoder VAE, residual motion teacher, anatomy and motion LDMs."""
