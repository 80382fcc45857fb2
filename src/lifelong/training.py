"""The training options of the learner (`Learner(model, methods, TrainConfig(...))` or keyword options),
which the YAML config's `train` section also validates into."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    device: str = "cpu"

    @model_validator(mode="after")
    def _combination(self) -> TrainConfig:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"`momentum` is an option of optimizer 'sgd', not {self.optimizer!r}")
        return self
