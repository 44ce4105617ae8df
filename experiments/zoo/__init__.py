"""The demo member zoo: architectures (`conf/member` builders), training recipes, and the
members trained where missing, as separate runs would save them."""

from experiments.zoo.members import (
    EXTENSIONS,
    ensure_zoo,
    member_entries,
    skipped_members,
    stale_members,
    zoo_directory,
)
from experiments.zoo.training import fit_predict, train_member

__all__ = [
    "EXTENSIONS",
    "ensure_zoo",
    "fit_predict",
    "member_entries",
    "skipped_members",
    "stale_members",
    "train_member",
    "zoo_directory",
]
