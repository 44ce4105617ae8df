"""The library's exceptions: one base type, `EnsembleError`, whose message always names the
member, field or path, and two kinds of it a caller may tell apart."""

from __future__ import annotations

__all__ = ["EnsembleError", "MemberError", "ModelLoadError"]


class EnsembleError(ValueError):
    """Bad input to the ensemble: names what is wrong and what was expected."""


class MemberError(EnsembleError):
    """A member that cannot be loaded or used; the message starts with its name."""

    def __init__(self, member: str, message: str) -> None:
        self.member = member
        super().__init__(f"Member {member!r}: {message}")


class ModelLoadError(EnsembleError):
    """A registered model that cannot be loaded (a server answers 503); names the model.

    The next request retries the load, so a file mended in place serves again.
    """

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        super().__init__(message)
