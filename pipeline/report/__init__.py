"""Reports of scoring runs and trained models: great-expectations checks, plots, HTML."""
