"""Fixtures shared by the pipeline tests: the small distill world and the model-load recorder."""

from tests.pipeline.test_distillation import loaded_models, world  # noqa: F401 (pytest fixtures)
