"""What `safe_mode` refuses in a SavedModel: graphs that act on the host, not only on tensors.

A SavedModel is code: its graph runs inside `load_member` (a TF1 graph's restore
and init ops, a TF2 resource's initialisers) and on every request (the
signature). `check_graph_ops` reads the graph before anything loads and names
each op of `UNSAFE_OPS` that either would run, and where.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

__all__ = ["UNSAFE_OPS", "check_graph_ops", "read_meta_graphs"]


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


# What safe_mode refuses in a graph that loading or serving runs: each family acts on the host
# beyond the tensors fed. TensorFlow has no op that starts a process; the Python ones are how a
# graph would. A TF2 SavedModel's own save/restore functions are never walked (nothing calls them).
UNSAFE_OPS: dict[str, frozenset[str]] = {
    # Call a Python function registered in the loading process: arbitrary code.
    "Python-calling": _ops("PyFunc PyFuncStateless EagerPyFunc"),
    # Read, list, map or write files named by a tensor or attribute: file ops, readers, file
    # datasets, file-backed tables and summary writers (and PrintV2 to a file://, checked apart).
    "file-system": _ops(
        "ReadFile WriteFile MatchingFiles FileSystemSetConfiguration ImmutableConst RecordInput LMDBReader "
        "InitializeTableFromTextFile InitializeTableFromTextFileV2 LoadAndRemapMatrix GenerateVocabRemapping "
        "CreateSummaryFileWriter CreateSummaryDbWriter WholeFileReader WholeFileReaderV2 TextLineReader "
        "TextLineReaderV2 TFRecordReader TFRecordReaderV2 FixedLengthRecordReader FixedLengthRecordReaderV2 "
        "TFRecordDataset TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset FixedLengthRecordDatasetV2 "
        "CSVDataset CSVDatasetV2 ExperimentalCSVDataset SqlDataset ExperimentalSqlDataset LMDBDataset "
        "ExperimentalLMDBDataset MatchingFilesDataset ExperimentalMatchingFilesDataset CacheDataset "
        "CacheDatasetV2 SnapshotDataset SnapshotDatasetV2 SnapshotDatasetReader SaveDataset SaveDatasetV2 "
        "LoadDataset DistributedSave DatasetToTFRecord ExperimentalDatasetToTFRecord "
        # Ops that open a file named by an attribute: a sampler's vocabulary file.
        "FixedUnigramCandidateSampler"
    ),
    # Checkpoint files read or written anywhere; only a TF1 graph's restore op may hold a Restore
    # (the loader feeds it the SavedModel's own variables).
    "checkpoint": _ops(
        "Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice MergeV2Checkpoints ShardedFilename "
        "ShardedFilespec"
    ),
    # Debugger taps: send tensors to their debug_urls (file:// or grpc://).
    "debugger": _ops(
        "DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary "
        "DebugNumericSummaryV2 Copy CopyHost"
    ),
    # Run a graph serialized in a string tensor, out of this check's sight.
    "hidden-graph": _ops("DatasetFromGraph"),
}
_FAMILY = {op: family for family, ops in UNSAFE_OPS.items() for op in ops}
_RESTORE = frozenset({"Restore", "RestoreV2", "RestoreSlice"})


def check_graph_ops(path: str, metas: Sequence[Any], tags: Sequence[str] | None, signature: str) -> None:
    """Raise naming each `UNSAFE_OPS` op the SavedModel at `path` would run, and where: in
    signature `signature`'s graph and every function it calls, and in what loading runs (a TF1
    graph's restore and init ops, a TF2 resource's functions). `metas` are its MetaGraphs."""
    meta = _meta_graph(metas, tags)
    if meta is None:
        return  # the loader names the missing MetaGraph before it runs anything
    nodes = {node.name: node for node in meta.graph_def.node}
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    found: list[str] = []
    walked: set[str] = set()

    def check(node: Any, where: str, allowed: frozenset[str] = frozenset()) -> None:
        family = "file-system" if _opens_a_named_file(node) else _FAMILY.get(node.op)
        if family and node.op not in allowed:
            found.append(f"op {node.op!r} ({family}, node {node.name!r}) in {where}")
        attrs = list(node.attr.values())
        functions([node.op, *(a.func.name for a in attrs), *(f.name for a in attrs for f in a.list.func)])

    def functions(names: Sequence[str]) -> None:  # every node of each, and of what it calls
        for name in names:
            if name in library and name not in walked:
                walked.add(name)
                for node in library[name].node_def:
                    check(node, f"function {name!r}")

    def graph(fetches: Sequence[str], where: str, allowed: frozenset[str] = frozenset()) -> None:
        stack, seen = list(fetches), set()
        while stack:  # back from the fetches along data and control inputs: what a run computes
            name = stack.pop().lstrip("^").split(":")[0]
            if name in nodes and name not in seen:
                seen.add(name)
                check(nodes[name], where, allowed)
                stack += nodes[name].input

    for key in (signature, "__saved_model_init_op"):
        if key in meta.signature_def:
            graph(
                [t.name for t in meta.signature_def[key].outputs.values()], f"the graph of signature {key!r}"
            )
    if meta.object_graph_def.nodes:  # TF2: what the signature calls, and a resource runs on load
        functions(_tf2_functions(meta.object_graph_def.nodes, signature))
    else:  # TF1: the loader runs the graph's own restore op, then its main or legacy init op
        graph([meta.saver_def.restore_op_name], "the graph's restore op", _RESTORE)
        init = [
            meta.collection_def[k]
            for k in ("saved_model_main_op", "legacy_init_op")
            if k in meta.collection_def
        ]
        graph([name for c in init for name in c.node_list.value], "the graph's init op")
    if found:
        raise ValueError(
            f"SavedModel {path} would run {'; '.join(found[:5])}. A SavedModel is code: safe_mode=True "
            "refuses graphs that touch files, checkpoints, debuggers or Python. If you trust its source "
            "as you would code, load it with safe_mode=False."
        )


def _meta_graph(metas: Sequence[Any], tags: Sequence[str] | None) -> Any:
    """The MetaGraph the loader reads: the one of `tags`, else the only one, else the 'serve' one."""
    if tags is None and len(metas) == 1:
        return metas[0]
    wanted = set(tags) if tags is not None else {"serve"}
    return next((m for m in metas if set(m.meta_info_def.tags) == wanted), None)


def _opens_a_named_file(node: Any) -> bool:
    """A PrintV2 to a file://, or a proto op whose descriptors come from a file (any source but
    the binary's own, `local://`)."""
    if node.op in ("DecodeProtoV2", "EncodeProto"):
        source = node.attr["descriptor_source"].s if "descriptor_source" in node.attr else b"local://"
        return source != b"local://"
    stream = node.attr["output_stream"].s if "output_stream" in node.attr else b""
    return node.op == "PrintV2" and bool(stream.startswith(b"file://"))


def _tf2_functions(objects: Sequence[Any], signature: str) -> list[str]:
    """The concrete functions of a TF2 object graph that signature `signature` is, and that its
    resources run (created and initialised on load)."""
    ids = [c.node_id for obj in objects if obj.WhichOneof("kind") == "resource" for c in obj.children]
    holder = [c.node_id for c in objects[0].children if c.local_name == "signatures"]
    ids += [c.node_id for h in holder for c in objects[h].children if c.local_name == signature]
    return [
        name
        for obj in (objects[i] for i in ids)
        for name in (obj.bare_concrete_function.concrete_function_name, *obj.function.concrete_functions)
    ]


def read_meta_graphs(path: str) -> list[Any]:
    """The MetaGraphs of the SavedModel at `path`, read from its proto alone (nothing runs)."""
    proto = saved_model_pb2.SavedModel()
    pb = tf.io.gfile.join(path, "saved_model.pb")
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f:
            proto.ParseFromString(f.read())
    else:
        with tf.io.gfile.GFile(tf.io.gfile.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), proto)
    return list(proto.meta_graphs)
