"""Small reference models, and `build_model` which makes one for a stream from a config entry."""

from __future__ import annotations

from typing import Any

from torch import nn

from lifelong.errors import ConfigError
from lifelong.imports import MODEL_PROVIDED, accepts, check_options, is_import_path, model_class
from lifelong.models.cnn import CNN
from lifelong.models.gpt import TinyGPT
from lifelong.models.mlp import MLP
from lifelong.streams.experience import Stream

__all__ = ["CNN", "MLP", "TinyGPT", "build_model", "features_and_head", "MODEL_NAMES"]

MODEL_NAMES = ("mlp", "cnn", "gpt")


def build_model(name: str, stream: Stream, **options: Any) -> nn.Module:
    """A model sized for `stream` (its input shape and number of classes or vocabulary size).

    `name` is a built-in model or the import path of your own class (`"mypkg.models:MyNet"`), which is
    built as `Cls(input_shape=stream.input_shape, num_classes=stream.num_classes, **options)`, passing each
    of `input_shape` and `num_classes` only if the constructor has a parameter of that name."""
    if is_import_path(name):
        cls = model_class(name)
        check_options(cls, options, "model", name, provided=MODEL_PROVIDED)
        sizes = {"input_shape": tuple(stream.input_shape), "num_classes": stream.num_classes}
        return cls(**{k: v for k, v in sizes.items() if accepts(cls, k)}, **options)
    if stream.kind == "language_modeling" and name != "gpt":
        raise ConfigError(f"model {name!r} cannot model language; use model 'gpt' for a text stream")
    if stream.kind == "classification" and name == "gpt":
        raise ConfigError("model 'gpt' is for text streams; use 'mlp' or 'cnn' for classification")
    if name == "mlp":
        return MLP(stream.input_shape, stream.num_classes, **options)
    if name == "cnn":
        if len(stream.input_shape) != 3:
            raise ConfigError(
                f"model 'cnn' needs image input shaped [C, H, W] but the stream gives {stream.input_shape}; "
                "use model 'mlp'"
            )
        return CNN(stream.input_shape, stream.num_classes, **options)
    if name == "gpt":
        return TinyGPT(stream.num_classes, block_size=stream.input_shape[0], **options)
    raise ConfigError(
        f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, or name your own nn.Module class "
        "by import path ('package.module:Class')"
    )


def features_and_head(model: nn.Module, method: str) -> tuple[nn.Module, nn.Linear]:
    """The feature extractor and the linear head of `model` (`model.features`, `model.head`), which methods
    such as iCaRL, NCM and analytic learning work on. The built-in MLP and CNN have both; a model of your
    own needs the two attributes, with `model(x) == model.head(model.features(x))`."""
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if not isinstance(features, nn.Module) or not isinstance(head, nn.Linear):
        raise ConfigError(
            f"method {method!r} needs a model with a `features` module and a linear `head` "
            f"(model(x) == head(features(x))), like the built-in 'mlp' and 'cnn'; "
            f"{type(model).__name__} has no such pair"
        )
    return features, head
