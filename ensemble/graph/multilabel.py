"""Members as a multilabel ensemble holds them: k independent probabilities per row.

Under `build_ensemble(..., task="multilabel")` each column of a member is one label's
probability, on its own: a sigmoid over k columns (k may be 1: one label), or logits that take
a sigmoid each (`output="logits"`). A softmax over k > 1 columns is one distribution, its
columns tied, and is refused; so is a member whose values leave [0, 1].
"""

from __future__ import annotations

from ensemble.members.checks import check_multilabel_outputs
from ensemble.members.member import Member

__all__ = ["multilabel_members"]


def multilabel_members(members: list[Member]) -> list[Member]:
    """Copies of `members` that emit one independent probability per label (the caller's
    members are left as they were), each checked (`check_multilabel_outputs`). A member that
    declares no output kind is read as probabilities, and its probe rows must show it."""
    result = []
    for member in members:
        copy = member.copy(output=member.output_kind or "probabilities", multilabel=True)
        check_multilabel_outputs(copy)
        result.append(copy)
    return result
