"""How the members' predictions enter the graph: each member called alone, or groups of one
architecture fused (`ensemble.graph.fused`); and an ensemble rewired with or without fusion."""

from __future__ import annotations

import logging
from typing import Any

import keras

from ensemble.errors import EnsembleError
from ensemble.graph.fused import FusedMembers, fusable_groups
from ensemble.graph.layers import MemberStack
from ensemble.graph.view import EnsembleView
from ensemble.members.member import Member

__all__ = ["member_pieces", "with_fusion"]

log = logging.getLogger(__name__)


def member_pieces(
    members: list[Member], inputs: dict[str, Any], fuse: bool | None
) -> tuple[list[Any], list[int] | None, list[int] | None]:
    """The members' prediction tensors as `MemberStack` takes them: the pieces (a member's
    prediction, or a fused group's, stacked), each piece's member count and, when fusing
    moved a member, each member's position in the pieces (see `MemberStack`)."""
    if fuse not in (None, True, False):
        raise EnsembleError(f"Expected fuse to be True, False or None. Received: fuse={fuse!r}")
    groups = {group[0]: group for group in fusable_groups(members)} if fuse else {}
    fused = {position for group in groups.values() for position in group}
    taken = {member.name for member in members}
    pieces: list[Any] = []
    sizes: list[int] = []
    placed: list[int] = []
    for position, member in enumerate(members):
        if position in groups:
            name = f"fused_{len(pieces)}"
            while name in taken:
                name += "_"
            layer = FusedMembers([members[i] for i in groups[position]], name=name)
            log.info("Fusing members %s (one architecture) into layer %r.", layer.member_names, name)
            pieces.append(layer(inputs[member.input_names[0]]))
            sizes.append(len(groups[position]))
            placed.extend(groups[position])
        elif position not in fused:
            pieces.append(member({n: inputs[n] for n in member.input_names}))
            sizes.append(1)
            placed.append(position)
    order = [placed.index(position) for position in range(len(members))]
    return pieces, sizes if groups else None, None if order == sorted(order) else order


def with_fusion(model: keras.Model, fuse: bool) -> keras.Model:
    """`model` with every fusable group of members fused (`fuse=True`) or every member
    computed alone (`fuse=False`); `model` itself when it already is. Every other layer (the
    combiner, calibration, conformal outputs, ...) is the same layer object, so its fitted
    state carries over; the result's outputs equal `model`'s up to float rounding."""
    if fuse not in (True, False):
        raise EnsembleError(f"Expected fuse to be True or False. Received: fuse={fuse!r}")
    view = EnsembleView.of(model)
    members = list(view.members)
    wanted = [[members[i].name for i in group] for group in fusable_groups(members)] if fuse else []
    if view.fused == wanted:
        return model
    inputs: dict[str, Any] = {}

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        # The members' inputs in the new graph are collected as the members are called; the
        # member stack is then rebuilt from them (the members' old outputs are left unused,
        # so they are not part of the new model).
        if isinstance(layer, Member):
            inputs.update(args[0])
        elif isinstance(layer, FusedMembers):
            inputs[layer.members[0].input_names[0]] = args[0]
        elif isinstance(layer, MemberStack):
            pieces, sizes, order = member_pieces(members, inputs, fuse)
            return MemberStack(sizes, order, name=layer.name)(pieces)
        return layer(*args, **kwargs)

    rewired = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    log.info("Rewired ensemble %r with fused groups %s.", model.name, EnsembleView.of(rewired).fused)
    return rewired
