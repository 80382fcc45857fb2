"""Methods against forgetting. Each is one small class in its own file; see `base.py` for the protocol and
docs/methods/ for a page per method (paper, options, the scenarios it supports)."""

from __future__ import annotations

from typing import Any

from lifelong.errors import ConfigError
from lifelong.methods.agem import AGEM
from lifelong.methods.analytic import Analytic
from lifelong.methods.base import Context, Method, check_composition
from lifelong.methods.compatible import Compatible
from lifelong.methods.cumulative import Cumulative
from lifelong.methods.der import DER, DERpp
from lifelong.methods.er_ace import ErAce
from lifelong.methods.ewc import EWC, OnlineEWC
from lifelong.methods.fixmatch import FixMatch
from lifelong.methods.gdumb import GDumb
from lifelong.methods.gem import GEM
from lifelong.methods.hft import HFT
from lifelong.methods.icarl import ICaRL
from lifelong.methods.joint import Joint
from lifelong.methods.l2 import L2
from lifelong.methods.lora import LoRA
from lifelong.methods.lwf import LwF
from lifelong.methods.mas import MAS
from lifelong.methods.mean_teacher import MeanTeacher
from lifelong.methods.merge import Merge
from lifelong.methods.naive import Naive
from lifelong.methods.ncm import NCM
from lifelong.methods.pseudo_label import PseudoLabel
from lifelong.methods.replay import Replay
from lifelong.methods.si import SI
from lifelong.methods.wa import WA

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        Naive,
        Joint,
        Cumulative,
        Replay,
        ErAce,
        DER,
        DERpp,
        GDumb,
        ICaRL,
        WA,
        EWC,
        OnlineEWC,
        SI,
        MAS,
        L2,
        LwF,
        Compatible,
        PseudoLabel,
        FixMatch,
        MeanTeacher,
        AGEM,
        GEM,
        LoRA,
        HFT,
        Merge,
        NCM,
        Analytic,
    )
}

__all__ = [
    "AGEM",
    "DER",
    "EWC",
    "GEM",
    "HFT",
    "L2",
    "MAS",
    "METHODS",
    "NCM",
    "SI",
    "WA",
    "Analytic",
    "Compatible",
    "Context",
    "Cumulative",
    "DERpp",
    "ErAce",
    "FixMatch",
    "GDumb",
    "ICaRL",
    "Joint",
    "LoRA",
    "LwF",
    "MeanTeacher",
    "Merge",
    "Method",
    "Naive",
    "OnlineEWC",
    "PseudoLabel",
    "Replay",
    "build_method",
    "check_composition",
]


def build_method(name: str, **options: Any) -> Method:
    """The method called `name` in configs, with its options (e.g. `build_method("ewc", strength=100)`)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)
