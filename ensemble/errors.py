"""The one exception type of the library: it always names the member, field or path."""

from __future__ import annotations

__all__ = ["EnsembleError", "MemberError"]


class EnsembleError(ValueError):
    """Bad input to the ensemble: names what is wrong and what was expected."""


class MemberError(EnsembleError):
    """A member that cannot be loaded or used; the message starts with its name."""

    def __init__(self, member: str, message: str) -> None:
        self.member = member
        super().__init__(f"Member {member!r}: {message}")
