"""The error hierarchy: one root, small domain subclasses."""

from __future__ import annotations


class DialerError(Exception):
    """Root of every error the dialer raises on purpose."""


class ConfigError(DialerError):
    """A configuration, campaign or scenario file is invalid.

    `problems` lists every problem found, each as "file: key.path: what was expected".
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class ComplianceError(DialerError):
    """The compliance gate could not decide; the dial is blocked (fail closed)."""


class ClearanceError(ComplianceError):
    """A dial was attempted without a valid, fresh clearance for that number and campaign."""


class TelephonyError(DialerError):
    """The telephony layer could not carry out a command."""


class LeadError(DialerError):
    """A lead file or lead record is invalid."""
