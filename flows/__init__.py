"""eo-pipeline: flows."""
