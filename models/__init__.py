"""eo-pipeline: models."""
