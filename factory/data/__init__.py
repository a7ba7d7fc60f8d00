"""Data sources: the built-in phantom cohort, readers of real cohorts, preprocessing, clinical priors."""
