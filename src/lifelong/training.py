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
    # LR across experiences (lifelong.schedules): cosine / linear re-warm and re-decay at every experience,
    # constant, continue (no re-warm: the first decay's final LR), wsd (warm up once, hold, cool down at the
    # end of each experience over its last `cooldown` share of steps)
    scheduler: Literal["constant", "cosine", "linear", "continue", "wsd"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)  # where cosine / linear / continue / wsd decay to
    cooldown: float | None = Field(None, gt=0.0, le=1.0)  # wsd: share of each experience's steps; default 0.1
    continue_from: Literal["cooled", "hot"] = "cooled"  # wsd: next experience from the cooled or hot weights
    grad_accum: int = Field(1, ge=1)  # mini-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast where the hardware supports bfloat16
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
        if self.scheduler == "continue" and self.min_lr == 0:
            raise ValueError(
                "scheduler 'continue' trains every experience after the first at `min_lr`, which is 0: "
                "set min_lr > 0 (e.g. lr / 10)"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"`min_lr` ({self.min_lr}) is above `lr` ({self.lr}); the schedule decays to it")
        if self.scheduler != "wsd":
            for key, default in (("cooldown", None), ("continue_from", "cooled")):
                if getattr(self, key) != default:
                    raise ValueError(f"`{key}` is an option of scheduler 'wsd', not {self.scheduler!r}")
        if self.precision == "bf16":
            check_bf16(self.device)
        return self

    @property
    def cooldown_share(self) -> float:
        """wsd: the share of each experience's steps spent cooling down."""
        return 0.1 if self.cooldown is None else self.cooldown


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


def check_bf16(device: str) -> None:
    """Raise ValueError unless bfloat16 autocast is supported on `device` (a GPU with bf16, or a CPU with
    native bf16 instructions): elsewhere it is emulated, slower than float32, so asking for it is an error."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(torch.device(device))
            raise ValueError(f"precision 'bf16': {name} has no bfloat16 support; use precision 'fp32'")
        return
    if kind == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return
    raise ValueError(
        f"precision 'bf16' needs hardware with bfloat16 support; {device!r} here has none (bf16 would be "
        "emulated and slower): use precision 'fp32', or train on a GPU (device: cuda)"
    )
