"""A recording stand-in for the part of HugeCTR 23.08's Python API that notebook 07 uses.

HugeCTR ships only in NVIDIA's Merlin HugeCTR container and needs a GPU. This module offers the
same names with the argument names, order and required arguments of HugeCTR 23.08's pybind11
bindings (``HugeCTR/include/pybind/*_wrapper.hpp`` at tag v23.08.00): an unknown keyword, a
missing required argument, an enum member 23.08 lacks, an embedding wider than 1024, ``fit``
before ``compile`` or ``load_sparse_weights`` of an undeclared table raise here as they do there.

It trains nothing. Every call is appended to :data:`CALLS` (and, when the environment variable
``MMLENS_HUGECTR_STANDIN_LOG`` names a file, written there as JSON at exit).
``save_params_to_files`` writes empty files where HugeCTR writes the snapshot, and the inference
model's ``predict`` returns each row's own label, read from the listed Parquet files and wrapping
around like HugeCTR's reader, so that a test can tell whether predictions come back in file order.
"""

from __future__ import annotations

import atexit
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

CALLS: list[dict[str, Any]] = []
LOG_ENV = "MMLENS_HUGECTR_STANDIN_LOG"
MAX_VEC_SIZE = 1024  # add_sparse_embedding.cpp: embedding_vec_size must be in (0, 1024]

# Argument names in binding order; "name=" has a default, "name" is required (pybind11 keeps
# a later argument required even after defaulted ones).
SIGNATURES: dict[str, list[str]] = {
    "CreateSolver": [
        "model_name= seed= lr_policy= lr= warmup_steps= decay_start= decay_steps= decay_power= "
        "end_lr= max_eval_batches= batchsize_eval= batchsize= vvgpu= repeat_dataset= "
        "use_mixed_precision= enable_tf32_compute= scaler= metrics_spec= i64_input_key= "
        "use_algorithm_search= use_cuda_graph= gen_loss_summary= train_intra_iteration_overlap= "
        "train_inter_iteration_overlap= eval_intra_iteration_overlap= "
        "eval_inter_iteration_overlap= device_layout= use_embedding_collection= all_reduce_algo= "
        "grouped_all_reduce= num_iterations_statistics= perf_logging= drop_incomplete_batch= "
        "kafka_brockers= training_callbacks="],
    "DataReaderParams": [
        "data_reader_type source keyset= eval_source check_type cache_eval_data= num_samples= "
        "eval_num_samples= float_label_dense= read_file_sequentially= num_workers= "
        "slot_size_array= data_source_params= async_param="],
    "CreateOptimizer": [
        "optimizer_type= update_type= beta= lambda1= lambda2= beta1= beta2= epsilon= "
        "initial_accu_value= momentum_factor= atomic_update="],
    "DataReaderSparseParam": ["top_name nnz_per_slot is_fixed_length slot_num"],
    "Input": ["label_dim label_name dense_dim dense_name data_reader_sparse_param_array",
              "label_dims label_names dense_dim dense_name data_reader_sparse_param_array"],
    "SparseEmbedding": [
        "embedding_type workspace_size_per_gpu_in_mb= embedding_vec_size combiner "
        "sparse_embedding_name bottom_name slot_size_array= optimizer= hybrid_embedding_param="],
    "DenseLayer": [
        "layer_type bottom_names top_names factor= eps= gamma_init_type= beta_init_type= "
        "dropout_rate= elu_alpha= num_output= weight_init_type= bias_init_type= num_layers= "
        "leading_dim= time_step= batchsize= SeqLength= vector_size= selected= selected_slots= "
        "ranges= indices= weight_dims= projection_dim= out_dim= axis= max_sequence_len_from= "
        "max_sequence_len_to= num_attention_heads= transpose_b= target_weight_vec= "
        "use_regularizer= regularizer_type= lambda= pos_type= act_type= num_outputs= use_bias= "
        "activations= biases= compute_config= shape= dim= index="],
    "Model": ["solver reader_params opt_params etc_params="],
    "Model.add": ["input", "sparse_embedding", "dense_layer"],
    "Model.compile": [""],
    "Model.summary": [""],
    "Model.fit": ["num_epochs= max_iter= display= eval_interval= snapshot= snapshot_prefix="],
    "Model.load_sparse_weights": ["sparse_embedding_files", "sparse_embedding_files_map"],
    "Model.freeze_embedding": ["", "embedding_name"],
    "Model.graph_to_json": ["graph_config_file"],
    "Model.save_params_to_files": ["prefix iter="],
    "InferenceParams": [
        "model_name max_batchsize hit_rate_threshold dense_model_file sparse_model_files "
        "device_id= use_gpu_embedding_cache cache_size_percentage i64_input_key "
        "use_mixed_precision= scaler= use_algorithm_search= use_cuda_graph= "
        "number_of_worker_buffers_in_pool= number_of_refresh_buffers_in_pool= thread_pool_size= "
        "cache_refresh_percentage_per_iteration= deployed_devices= "
        "default_value_for_each_table= volatile_db= persistent_db= update_source= "
        "maxnum_des_feature_per_sample= refresh_delay= refresh_interval= "
        "maxnum_catfeature_query_per_table_per_sample= embedding_vecsize_per_table= "
        "embedding_table_names= network_file= label_dim= slot_num= non_trainable_params_file= "
        "use_static_table= embedding_cache_type= use_context_stream= fuse_embedding_table= "
        "use_hctr_cache_implementation= init_ec= enable_pagelock= fp8_quant="],
    "InferenceModel": ["model_config_path inference_params"],
    "InferenceModel.predict": [
        "num_batches source data_reader_type check_type slot_size_array= data_source_params= "
        "reading_file_sequentially="],
}


def bind(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Match a call to the first 23.08 overload of ``name`` it fits; raise TypeError if none."""
    errors = []
    for overload in SIGNATURES[name]:
        params = overload.split()
        names = [p.rstrip("=") for p in params]
        bound = dict(zip(names, args, strict=False))
        unknown = [k for k in kwargs if k not in names or k in bound]
        missing = [n for n, p in zip(names, params, strict=True)
                   if not p.endswith("=") and n not in bound and n not in kwargs]
        if len(args) <= len(names) and not unknown and not missing:
            return {**bound, **kwargs}
        errors.append(f"({' '.join(params)}): unknown {unknown}, missing {missing}")
    raise TypeError(f"{name}() matches no HugeCTR 23.08 overload: " + "; ".join(errors))


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a recorded argument."""
    if isinstance(value, Recorded):
        return value.record
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def record(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind, append to :data:`CALLS`, return the bound arguments."""
    bound = bind(name, args, kwargs)
    CALLS.append({"call": name, **{k: _plain(v) for k, v in bound.items()}})
    return bound


class Recorded:
    """What a recorded constructor returns: its kind and bound arguments."""

    def __init__(self, kind: str, bound: dict[str, Any]) -> None:
        self.kind, self.args = kind, bound
        self.record = {"kind": kind, **{k: _plain(v) for k, v in bound.items()}}

    def __repr__(self) -> str:
        return f"<{self.kind}>"


class _Member(str):
    """An enum member: compares and serialises as ``Enum.member``."""


class _Enum:
    def __init__(self, name: str, members: str) -> None:
        self._name = name
        for member in members.split():
            setattr(self, member, _Member(f"{name}.{member}"))

    def __getattr__(self, member: str) -> Any:
        raise AttributeError(f"HugeCTR 23.08's {self._name} has no member {member!r}")


DataReaderType_t = _Enum("DataReaderType_t", "Norm Raw Parquet RawAsync")
Check_t = _Enum("Check_t", "Sum Non")
Embedding_t = _Enum("Embedding_t", "DistributedSlotSparseEmbeddingHash "
                    "LocalizedSlotSparseEmbeddingHash LocalizedSlotSparseEmbeddingOneHot "
                    "HybridSparseEmbedding")
Layer_t = _Enum("Layer_t", "BatchNorm LayerNorm BinaryCrossEntropyLoss Reshape Select Concat "
                "CrossEntropyLoss Dropout ElementwiseMultiply ELU InnerProduct FusedInnerProduct "
                "MLP Interaction MultiCrossEntropyLoss ReLU ReLUHalf Sigmoid Slice WeightMultiply "
                "FmOrder2 Add ReduceSum Softmax Gather PReLU_Dice GRU MatrixMultiply "
                "MultiHeadAttention Scale FusedReshapeConcat FusedReshapeConcatGeneral Sub "
                "ReduceMean MultiCross Cast SequenceMask")
Optimizer_t = _Enum("Optimizer_t", "Ftrl Adam RMSProp AdaGrad MomentumSGD Nesterov SGD")
Update_t = _Enum("Update_t", "Local Global LazyGlobal")
LrPolicy_t = _Enum("LrPolicy_t", "fixed")
MetricsType = _Enum("MetricsType", "AUC AverageLoss HitRate NDCG SMAPE")
Error_t = _Enum("Error_t", "Success FileCannotOpen BrokenFile OutOfMemory OutOfBound WrongInput "
                "IllegalCall NotInitialized")


def _constructor(kind: str) -> Any:
    def make(*args: Any, **kwargs: Any) -> Recorded:
        bound = record(kind, args, kwargs)
        if kind == "SparseEmbedding" and not 0 < int(bound["embedding_vec_size"]) <= MAX_VEC_SIZE:
            raise ValueError(f"embedding_vec_size {bound['embedding_vec_size']} is outside "
                             f"(0, {MAX_VEC_SIZE}]")
        return Recorded(kind, bound)

    make.__name__ = kind
    return make


CreateSolver = _constructor("CreateSolver")
DataReaderParams = _constructor("DataReaderParams")
CreateOptimizer = _constructor("CreateOptimizer")
DataReaderSparseParam = _constructor("DataReaderSparseParam")
Input = _constructor("Input")
SparseEmbedding = _constructor("SparseEmbedding")
DenseLayer = _constructor("DenseLayer")


class Model:
    """``hugectr.Model``: records ``add``, ``compile``, ``fit`` and the rest, and checks their
    order and names as HugeCTR 23.08 does (``pybind/model.cpp``, ``model.hpp``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = record("Model", args, kwargs)
        self.embeddings: list[str] = []
        self.compiled = False

    def add(self, *args: Any, **kwargs: Any) -> None:
        (layer,) = bind("Model.add", args, kwargs).values()
        kinds = {"Input": "input", "SparseEmbedding": "sparse_embedding",
                 "DenseLayer": "dense_layer"}
        if not isinstance(layer, Recorded) or layer.kind not in kinds:
            raise TypeError(f"Model.add() takes an Input, SparseEmbedding or DenseLayer, "
                            f"not {layer!r}")
        CALLS.append({"call": "Model.add", kinds[layer.kind]: layer.record})
        if layer.kind == "SparseEmbedding":
            self.embeddings.append(layer.args["sparse_embedding_name"])

    def compile(self, *args: Any, **kwargs: Any) -> None:
        record("Model.compile", args, kwargs)
        self.compiled = True

    def summary(self, *args: Any, **kwargs: Any) -> None:
        record("Model.summary", args, kwargs)

    def fit(self, *args: Any, **kwargs: Any) -> None:
        bound = record("Model.fit", args, kwargs)
        self._require_compiled("start the training process")
        if self.args["solver"].args.get("repeat_dataset", True) and \
                bound.get("max_iter", 2000) <= 0:
            raise ValueError("Require max_iter>0 under non-epoch mode")

    def load_sparse_weights(self, *args: Any, **kwargs: Any) -> None:
        (files,) = record("Model.load_sparse_weights", args, kwargs).values()
        self._require_compiled("load sparse weights")
        for name, folder in (files.items() if isinstance(files, dict) else
                             zip(self.embeddings, files, strict=True)):
            self._require_embedding(name)
            missing = [f for f in ("key", "emb_vector") if not (Path(folder) / f).exists()]
            if missing:
                raise FileNotFoundError(f"{folder}: no {missing} file")

    def freeze_embedding(self, *args: Any, **kwargs: Any) -> None:
        for name in record("Model.freeze_embedding", args, kwargs).values():
            self._require_embedding(name)

    def graph_to_json(self, *args: Any, **kwargs: Any) -> None:
        """Writes the calls recorded so far (HugeCTR writes the graph)."""
        target = record("Model.graph_to_json", args, kwargs)["graph_config_file"]
        Path(target).write_text(json.dumps({"calls": CALLS}, indent=1))

    def save_params_to_files(self, *args: Any, **kwargs: Any) -> str:
        """Empty files under HugeCTR's snapshot names (``Model::download_params_to_files``)."""
        bound = record("Model.save_params_to_files", args, kwargs)
        prefix, it = bound["prefix"], bound.get("iter", 0)
        for name in (f"{prefix}_dense_{it}.model", f"{prefix}_opt_dense_{it}.model"):
            Path(name).write_bytes(b"")
        for i in range(len(self.embeddings)):
            for kind in ("sparse", "opt_sparse"):
                folder = Path(f"{prefix}{i}_{kind}_{it}.model")
                folder.mkdir(exist_ok=True)
                for f in ("key", "emb_vector"):
                    (folder / f).write_bytes(b"")
        return Error_t.Success

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise RuntimeError(f"Cannot {what} before calling Model.compile()")

    def _require_embedding(self, name: str) -> None:
        if name not in self.embeddings:
            raise ValueError(f"No such embedding name: {name}")


def _labels(file_list: str) -> np.ndarray:
    """The label column of the Parquet files in a HugeCTR file list, in list order."""
    import pyarrow.parquet as pq

    paths = [p for p in Path(file_list).read_text().splitlines()[1:] if p.strip()]
    meta = json.loads((Path(paths[0]).parent / "_metadata.json").read_text())
    label = meta["labels"][0]["col_name"]
    return np.concatenate([pq.read_table(p, columns=[label]).column(0).to_numpy()
                           for p in paths]).astype(np.float32)


class InferenceModel:
    """``hugectr.inference.InferenceModel``: checks that the graph and snapshot files exist;
    ``predict`` returns each row's label (shape ``(num_batches * max_batchsize, 1)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = record("InferenceModel", args, kwargs)
        self.params = bound["inference_params"].args
        needed = [bound["model_config_path"], self.params["dense_model_file"],
                  *self.params["sparse_model_files"]]
        missing = [p for p in needed if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"InferenceModel: missing {missing}")

    def predict(self, *args: Any, **kwargs: Any) -> np.ndarray:
        bound = record("InferenceModel.predict", args, kwargs)
        n = int(bound["num_batches"]) * int(self.params["max_batchsize"])
        return np.resize(_labels(bound["source"]), n).reshape(n, 1)  # wraps around


inference = SimpleNamespace(InferenceParams=_constructor("InferenceParams"),
                            InferenceModel=InferenceModel)


LAYERS = ("DataReaderSparseParam", "Input", "SparseEmbedding", "DenseLayer")
# what :func:`describe` shows of each call (every argument is in CALLS)
KEY_ARGS = {
    "CreateSolver": ("batchsize", "lr", "repeat_dataset", "max_eval_batches", "metrics_spec"),
    "DataReaderParams": ("data_reader_type", "slot_size_array"),
    "Model": (),
    "Input": ("label_name", "dense_dim", "data_reader_sparse_param_array"),
    "DataReaderSparseParam": ("top_name", "nnz_per_slot", "slot_num"),
    "SparseEmbedding": ("sparse_embedding_name", "embedding_vec_size", "combiner"),
    "DenseLayer": ("layer_type", "bottom_names", "top_names", "num_output", "leading_dim"),
    "InferenceParams": ("max_batchsize", "dense_model_file"),
}


def _short(value: Any) -> str:
    if isinstance(value, dict) and "kind" in value:
        return _call(value["kind"], value)
    if isinstance(value, list) and value and isinstance(value[0], dict) and "kind" in value[0]:
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(_short(k) for k in value) + ": ...}"
    return re.sub(r"\b(\w+_t|MetricsType)\.", "", str(value))


def _call(name: str, values: dict[str, Any]) -> str:
    keys = KEY_ARGS.get(name, [k for k in values if k not in ("call", "kind")])
    return f"{name}(" + ", ".join(f"{k}={_short(values[k])}" for k in keys if k in values) + ")"


def describe(calls: Sequence[dict[str, Any]], width: int = 100) -> str:
    """One line per call, its main arguments only; layers inside the ``Model.add`` call."""
    lines = []
    for c in calls:
        if c["call"] in LAYERS:
            continue
        if c["call"] == "Model.add":
            line = f"Model.add({_short(next(v for k, v in c.items() if k != 'call'))})"
        else:
            line = _call(c["call"], c)
        lines.append(line if len(line) <= width else line[: width - 4] + " ...")
    return "\n".join(lines)


def _dump() -> None:
    target = os.environ.get(LOG_ENV)
    if target:
        Path(target).write_text(json.dumps(CALLS, indent=1))


atexit.register(_dump)
