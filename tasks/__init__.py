"""eo-pipeline: tasks."""
