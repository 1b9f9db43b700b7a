"""User-facing errors.

Anything a user can fix (bad input file, bad config value, existing output path) raises a subclass of
:class:`MobscaleError`. The CLI prints its message on one line and exits non-zero without a traceback
(unless ``--debug``). Messages must name the problem *and where it is* (path, variable, index).
"""

from __future__ import annotations


class MobscaleError(Exception):
    """Base class for errors caused by user input; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(MobscaleError):
    """A run config is invalid (unknown key, wrong type, inconsistent values)."""


class StoreError(MobscaleError):
    """A city store is missing, corrupt, or violates the schema."""


class InputDataError(MobscaleError):
    """A source file for an importer is malformed."""


class OutputExistsError(MobscaleError):
    """The output path exists and ``--overwrite`` was not given."""


class CheckpointError(MobscaleError):
    """A checkpoint is missing, incomplete or incompatible."""
