"""One error hierarchy. The CLI catches EdgeoptError and prints one line.

Messages name the bad value, what is allowed, and the fix.
``exit_code`` is 2 for usage errors (bad input the user can correct by changing
the command) and 1 for failures (a stage ran and did not succeed).
"""
from __future__ import annotations


class EdgeoptError(Exception):
    exit_code = 1


class ConfigError(EdgeoptError):
    """A bad option, recipe or stage config."""

    exit_code = 2


class InputError(EdgeoptError):
    """A missing or unreadable model, artifact or dataset."""

    exit_code = 2


class TargetError(ConfigError):
    """An unknown target or a target that cannot run the requested thing."""


class StageError(EdgeoptError):
    """A stage ran and failed."""


class ValidationError(StageError):
    """A converted model disagrees with its parent beyond tolerance."""

    def __init__(self, message: str, failures: list[str] | None = None):
        self.failures = failures or []
        if self.failures:
            message = f"{message}: " + "; ".join(self.failures)
        super().__init__(message)


class MissingDependencyError(EdgeoptError):
    """A package of an optional layer (pip extra) is not installed; the message names the extra."""

    exit_code = 2

    def __init__(self, package: str, extra: str | None = None, purpose: str = ""):
        self.package, self.extra = package, extra
        hint = f"pip install 'edgeopt[{extra}]'" if extra else f"pip install {package}"
        what = f" (needed for {purpose})" if purpose else ""
        verb = "are" if "," in package else "is"
        super().__init__(f"{package} {verb} not installed{what}; install with: {hint}")


class DockerUnavailable(EdgeoptError):
    """No Docker engine answers, locally or at --docker-host (the message says how to start one)."""
