"""Models and methods of your own, named in a config by import path.

    model: {name: "mypkg.models:MyNet", hidden: 64}
    method: {name: "mypkg.methods:MyMethod", alpha: 0.5}

A name holding a colon is `module:Class`: the module is imported (it must be importable, e.g. installed or
on PYTHONPATH) and the class taken from it when the config is read, and the options are checked against
the class's constructor then, so a typo fails before anything runs. The config keeps the name as written,
so `lifelong resume` imports the same class again.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from lifelong.errors import ConfigError

if TYPE_CHECKING:
    from lifelong.methods import Method

SEPARATOR = ":"

# what the run fills in itself, whatever the config says: a model's size comes from the stream, a method's
# random generator from the run's seed
MODEL_PROVIDED = ("input_shape", "num_classes")
METHOD_PROVIDED = ("seed",)

_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def is_import_path(name: Any) -> bool:
    """True if `name` is a `module:Class` import path rather than a built-in name."""
    return isinstance(name, str) and SEPARATOR in name


def import_class(path: str, what: str) -> type:
    """The class named by `path` ("package.module:Class"); `what` ("model", "method") is for messages."""
    module_name, _, attr = path.partition(SEPARATOR)
    if not module_name or not attr or SEPARATOR in attr:
        raise ConfigError(
            f"{what} {path!r} is not an import path; write it as 'package.module:Class' (one colon)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = f" (no module {err.name!r})" if err.name and err.name != module_name else ""
        raise ConfigError(
            f"{what} {path!r}: cannot import module {module_name!r}{missing}; the module must be importable "
            "from where lifelong runs: install its package, or put its folder on PYTHONPATH"
        ) from None
    except Exception as err:  # the module exists but fails while it is imported: say so, with its error
        raise ConfigError(
            f"{what} {path!r}: importing module {module_name!r} failed with {type(err).__name__}: {err}; "
            "fix the module so that it imports"
        ) from None
    obj: Any = module
    for part in attr.split("."):  # "module:Outer.Inner" reaches a nested class
        if not hasattr(obj, part):
            raise ConfigError(
                f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}; check the class name "
                "after the colon"
            )
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ConfigError(f"{what} {path!r} is a {type(obj).__name__}, not a class; name a class")
    return obj


def model_class(path: str) -> type[nn.Module]:
    """The `nn.Module` subclass named by the import path `path`."""
    cls = import_class(path, "model")
    if not issubclass(cls, nn.Module):
        raise ConfigError(f"model {path!r} is not a torch.nn.Module subclass; a model must be an nn.Module")
    return cls


def method_class(name: str) -> type[Method]:
    """The method class of a config name: a built-in name (`replay`) or an import path."""
    # imported here: lifelong.methods imports lifelong.models, which imports this module
    from lifelong.methods import METHODS, Method

    if not is_import_path(name):
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
        return METHODS[name]
    cls = import_class(name, "method")
    if not issubclass(cls, Method):
        raise ConfigError(
            f"method {name!r} is not a subclass of lifelong.methods.Method; subclass it (see docs/methods.md)"
        )
    return cls


def accepts(cls: type, name: str) -> bool:
    """True if `cls`'s constructor has a parameter called `name` (a `**kwargs` does not count)."""
    parameter = _parameters(cls).get(name)
    return parameter is not None and parameter.kind in _BY_KEYWORD


def check_options(
    cls: type, options: Mapping[str, Any], what: str, path: str, provided: Iterable[str] = ()
) -> None:
    """Raise ConfigError unless `cls(**options)` (plus the `provided` names the constructor takes) binds:
    no unknown option, no option the run provides itself, no required one missing."""
    parameters = _parameters(cls)
    provided = [p for p in provided if accepts(cls, p)]
    for option in options:
        if option in provided:
            source = "the run's seed" if option == "seed" else "the stream"
            raise ConfigError(
                f"{what} {path!r}: option {option!r} is set from {source}; remove it from the config"
            )
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind in _BY_KEYWORD and n not in provided]
    unknown = [o for o in options if o not in named]
    if unknown and not takes_any:
        raise ConfigError(
            f"{what} {path!r} has no option {unknown[0]!r}; {cls.__name__}() accepts "
            + (", ".join(named) if named else "no options")
        )
    missing = [n for n in named if parameters[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise ConfigError(
            f"{what} {path!r} needs option {missing[0]!r} ({cls.__name__}() has no default for it); "
            "set it in the config"
        )


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a constructor without a signature (a C extension): accept anything
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}
