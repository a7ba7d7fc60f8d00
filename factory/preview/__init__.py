"""Looking at a store: per-subject animated GIFs and montages, and a dataset report (report.md + PNGs)."""
