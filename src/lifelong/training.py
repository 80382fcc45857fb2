"""The training options of the learner (`Learner(model, methods, TrainConfig(...))` or keyword options),
which the YAML config's `train` section also validates into."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TrainConfig(BaseModel):
    """How each experience is trained. Also the keyword options of `Learner`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0.0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["constant", "cosine", "linear"] = "constant"  # restarts at every experience
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0.0)
    reset_optimizer: bool = True  # a fresh optimizer state at every experience
    eval_every: int | None = Field(None, ge=1)  # steps; evaluations for the stability gap
    eval_batch_size: int = Field(1000, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)  # steps; a checkpoint also ends every experience
    log_every: int | None = Field(50, ge=1)  # steps; training loss and LR to events.jsonl and the loggers
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        check_device(device)
        return device

    @model_validator(mode="after")
    def _combination(self) -> TrainConfig:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"`momentum` is an option of optimizer 'sgd', not {self.optimizer!r}")
        return self


def check_device(device: str) -> None:
    """Raise ValueError unless `device` names a device this torch build can use, so that a config asking
    for a GPU that is not there fails when it is read, not deep in training."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build but sees no GPU"
            raise ValueError(
                f"{device!r} is not available: this torch ({torch.__version__}) is {build}; use 'cpu'"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{device!r} is not available: this machine has {count} GPU(s) (cuda:0..)")
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{device!r} is not available on this machine; use 'cpu'")
        return
    raise ValueError(f"device type {parsed.type!r} is not supported; use 'cpu', 'cuda' or 'mps'")
