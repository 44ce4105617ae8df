"""Members: models from any format loaded as isolated, frozen Keras models, and the record of
the rows they trained on."""

from ensemble.members.load import DEFAULT_INPUT, FORMATS, detect_format, load_member
from ensemble.members.member import OUTPUT_KINDS, InputSpec, Member
from ensemble.members.saved_model import SavedModelLayer
from ensemble.members.training_rows import (
    load_training_rows,
    record_training_rows,
    row_hashes,
)

__all__ = [
    "DEFAULT_INPUT",
    "FORMATS",
    "OUTPUT_KINDS",
    "InputSpec",
    "Member",
    "SavedModelLayer",
    "detect_format",
    "load_member",
    "load_training_rows",
    "record_training_rows",
    "row_hashes",
]
