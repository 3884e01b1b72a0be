"""Failures the launcher turns into the exit codes the operator judges (contract.ExitCode)."""

from __future__ import annotations

from maas_workloads.contract import ExitCode


class LaunchError(Exception):
    """A failure with a known cause; its message goes to the termination log."""

    exit_code: ExitCode = ExitCode.APPLICATION_ERROR


class ConfigurationError(LaunchError):
    """The spec can never work as written (unknown model, missing column, bad option): not retried."""

    exit_code = ExitCode.CONFIGURATION_ERROR


class InfrastructureError(LaunchError):
    """The platform let the attempt down (storage unreachable, workers never joined): retried free."""

    exit_code = ExitCode.INFRASTRUCTURE_ERROR


class ApplicationError(LaunchError):
    """Training itself failed: counts against backoffLimit."""

    exit_code = ExitCode.APPLICATION_ERROR
