"""The exception hierarchy. Every message says what went wrong and how to fix it.

Library code raises these; the edges (CLI, magics, widgets) turn them into a short message.
"""

from __future__ import annotations


class P2CError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""

    exit_code = 1


class PaperError(P2CError):
    """The paper could not be read (wrong format, empty, encrypted, no text layer...)."""

    exit_code = 3


class ConfigError(P2CError):
    """Settings are missing or contradictory (no key, bad base URL, unknown stage)."""

    exit_code = 2


class BackendError(P2CError):
    """The model server could not be reached or refused the request."""

    exit_code = 4


class ReplyError(P2CError):
    """The model's reply could not be turned into a valid artifact, even after one re-ask."""

    exit_code = 5


class PlanError(P2CError):
    """Artifacts are inconsistent with each other (unknown files, cycles, unsafe paths)."""

    exit_code = 5


class UnsafePathError(PlanError):
    """A generated file name would land outside the repository folder."""


class RunError(P2CError):
    """The run folder is missing, damaged or in a state that does not allow the request."""

    exit_code = 6


class EditedArtifactError(RunError):
    """Regenerating would overwrite an artifact the user edited."""


class Cancelled(P2CError):
    """The user cancelled; the artifact in progress is discarded, everything saved is kept."""

    exit_code = 130
