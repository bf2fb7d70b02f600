"""Memory of one training step, computed without allocating anything.

A model is built and run under :func:`shape_only` (torch's ``FakeTensorMode``: every tensor has
its shape, dtype and a meta storage but no data, with CPU semantics, so bf16 autocast applies
as it does on a device). What one optimiser step of Adam holds:

* **weights**: every parameter and buffer in its dtype;
* **gradients**: one per trainable parameter, in its dtype;
* **optimizer**: Adam's ``exp_avg`` and ``exp_avg_sq`` per trainable parameter;
* **activations**: the bytes autograd keeps for the backward pass at the end of the forward:
  the distinct storages packed by ``torch.autograd.graph.saved_tensors_hooks`` (parameters and
  views of them excluded; under bf16 autocast the bf16 copies of the weights are included: they
  are kept for the backward too);
* **activations with gradient checkpointing** (models with transformer blocks): what stays
  saved outside the blocks, plus every block's input (the checkpoint keeps it to recompute),
  plus the largest block's own saved tensors (the backward recomputes one block at a time).

Not counted: the transient working memory of the largest single op, allocator fragmentation,
the framework's workspace (CUDA context, cuBLAS), and data. The counts are exact for the
tensors they cover: nothing is sampled or timed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "PRECISIONS",
    "SavedTensorMeter",
    "StepMemory",
    "default_dtype",
    "model_bytes",
    "prior_inputs",
    "prior_step_memory",
    "shape_only",
    "step_memory",
    "vqvae_step_memory",
]

#: mixed precision of a measured step: fp32, or bf16/fp16 autocast (``--mixed_precision``)
PRECISIONS = ("fp32", "bf16", "fp16")


@contextlib.contextmanager
def shape_only() -> Iterator[object]:
    """Build and run models on tensors without data (``FakeTensorMode``): shapes, dtypes and
    autograd work, nothing is allocated, value checks are skipped (``teacher.device.
    has_values``). Tensors made inside are fake and must not leave the block."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        yield mode


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules with floating parameters in ``dtype`` (``module.to(dtype)`` cannot convert
    fake tensors with tied weights in place)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _storage(t: Tensor) -> tuple[int, int]:
    """(identity, bytes) of the storage under ``t`` (shared by all its views)."""
    s = t.untyped_storage()
    return s._cdata, s.nbytes()


def model_bytes(model: nn.Module) -> tuple[int, int, int]:
    """``(weights, trainable parameters, trainable bytes)`` of ``model``: weights = every
    distinct parameter and buffer in its dtype (tied weights once)."""
    seen: set[int] = set()
    weights = 0
    for t in [*model.parameters(), *model.buffers()]:
        key, nbytes = _storage(t)
        if key not in seen:
            seen.add(key)
            weights += nbytes
    trainable = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trainable)
    return weights, n, sum(p.numel() * p.element_size() for p in trainable)


class SavedTensorMeter:
    """Bytes of the distinct storages autograd saves for the backward pass while active.

    ``with SavedTensorMeter(model.parameters()) as meter: loss = model(x)`` then
    ``meter.total``. Storages of ``exclude`` (the weights) are never counted. With
    :meth:`track`, each new storage is also attributed to the block whose forward saved it
    (``meter.per_block``).
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {_storage(t)[0] for t in exclude}
        self._seen: set[int] = set()
        self.total = 0
        self.per_block: dict[int, int] = {}
        self._block: int | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._ctx: contextlib.AbstractContextManager | None = None

    def add(self, t: Tensor) -> None:
        """Count ``t``'s storage once (unless excluded)."""
        key, nbytes = _storage(t)
        if key in self._excluded or key in self._seen:
            return
        self._seen.add(key)
        self.total += nbytes
        if self._block is not None:
            self.per_block[self._block] = self.per_block.get(self._block, 0) + nbytes

    def track(self, blocks: Sequence[nn.Module], inputs: bool = False) -> None:
        """Attribute what each of ``blocks`` saves to it; with ``inputs`` also count every
        block's tensor inputs (what a checkpointed block keeps to recompute itself)."""

        def enter(i: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple) -> None:
                self._block = i
                if inputs:
                    for a in args:
                        if isinstance(a, Tensor):
                            self.add(a)

            return hook

        def leave(module: nn.Module, args: tuple, out: object) -> None:
            self._block = None

        for i, b in enumerate(blocks):
            self._hooks.append(b.register_forward_pre_hook(enter(i)))
            self._hooks.append(b.register_forward_hook(leave))

    def __enter__(self) -> SavedTensorMeter:
        def pack(t: Tensor) -> Tensor:
            self.add(t)
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._ctx is not None
        self._ctx.__exit__(*exc)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


@dataclass(frozen=True)
class StepMemory:
    """Memory of one training step (bytes) of a model at ``batch`` × ``length``.

    Attributes:
        name: what was measured.
        batch: samples per step (per process).
        length: positions per sample (the transformer's window; audio samples for the VQ-VAE).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; weights, gradients and Adam stay fp32).
        params: trainable parameters (count).
        weights: every parameter and buffer (frozen ones included).
        grads: gradients of the trainable parameters.
        optimizer: Adam's two moments per trainable parameter.
        activations: saved for the backward pass without checkpointing.
        activations_ckpt: with gradient checkpointing (``None``: the model has no blocks).
        frozen_weights: parameters and buffers of the frozen models the step also runs (the
            distillation teacher and VQ-VAE), in their dtypes.
    """

    name: str
    batch: int
    length: int
    precision: str
    params: int
    weights: int
    grads: int
    optimizer: int
    activations: int
    activations_ckpt: int | None = None
    frozen_weights: int = 0

    @property
    def states(self) -> int:
        """Weights (frozen ones included) + gradients + optimizer state."""
        return self.weights + self.frozen_weights + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.activations

    @property
    def total_ckpt(self) -> int | None:
        if self.activations_ckpt is None:
            return None
        return self.states + self.activations_ckpt


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _blocks(model: nn.Module) -> list[nn.Module]:
    from teacher.prior.transformer import ResAttnBlock

    return [m for m in model.modules() if isinstance(m, ResAttnBlock)]


def step_memory(
    name: str,
    build: Callable[[], nn.Module],
    loss: Callable[[nn.Module], Tensor],
    batch: int,
    length: int,
    precision: str = "fp32",
    backward: bool = True,
    frozen: Callable[[], Sequence[nn.Module]] | None = None,
) -> StepMemory:
    """Measure one step of the model ``build()`` makes (see the module docstring).

    ``build`` and ``loss`` (model -> scalar loss of one batch, inputs made inside; with
    ``frozen``: ``(model, frozen modules)`` -> loss) run under :func:`shape_only`. ``frozen``
    builds the frozen models the step also runs (first, before ``build``): their weights are
    reported as ``frozen_weights`` and never counted as activations. With ``backward`` the
    backward pass runs as well, which checks that the step's gradients have the parameters'
    shapes (a ``RuntimeError`` naming the first that does not). Models with transformer blocks
    are measured a second time with gradient checkpointing on.
    """
    from teacher.train.loop import checkpointable_modules

    with shape_only():
        fixed = list(frozen()) if frozen is not None else []
        frozen_weights = model_bytes(nn.ModuleList(fixed))[0] if fixed else 0
        model = build().train()
        weights, n, trainable_bytes = model_bytes(model)
        params = list(model.parameters())
        exclude = [*params, *model.buffers()]
        for m in fixed:
            exclude += [*m.parameters(), *m.buffers()]
        blocks = _blocks(model)

        def run(inputs: bool) -> SavedTensorMeter:
            meter = SavedTensorMeter(exclude)
            meter.track(blocks, inputs=inputs)
            with meter, _autocast(precision):
                out = loss(model, fixed) if frozen is not None else loss(model)
            if out.dim() != 0:
                raise RuntimeError(f"{name}: the loss has shape {tuple(out.shape)}, not a scalar")
            if backward:
                out.backward()
                for pname, p in model.named_parameters():
                    if p.grad is not None and p.grad.shape != p.shape:
                        raise RuntimeError(
                            f"{name}: gradient of {pname} has shape {tuple(p.grad.shape)}, "
                            f"the parameter {tuple(p.shape)}"
                        )
                model.zero_grad(set_to_none=True)
            return meter

        plain = run(inputs=False)
        ckpt = None
        mods = checkpointable_modules(model)
        if mods and blocks:
            for m in mods:
                m.gradient_checkpointing = True
            kept = run(inputs=True)
            ckpt = kept.total + max(plain.per_block.values(), default=0)
    return StepMemory(
        name=name,
        batch=batch,
        length=length,
        precision=precision,
        params=n,
        weights=weights,
        grads=trainable_bytes,
        optimizer=2 * trainable_bytes,
        activations=plain.total,
        activations_ckpt=ckpt,
        frozen_weights=frozen_weights,
    )


def prior_inputs(cfg: object, batch: int) -> dict[str, Tensor | None]:
    """Zero inputs of one training batch of the prior ``cfg`` (a
    :class:`~teacher.prior.config.PriorConfig`): ``codes LongTensor[B, n_ctx]``, ``labels
    LongTensor[B, label_size]`` (``None`` when unlabelled), ``upper LongTensor[B, n_ctx /
    upsample_ratio]`` (upsamplers, else ``None``)."""
    codes = torch.zeros(batch, cfg.n_ctx, dtype=torch.long)
    labels = torch.zeros(batch, cfg.label_size, dtype=torch.long) if cfg.labels else None
    if labels is not None and cfg.labels.include_timing:
        # a valid timing label: a song of max_duration, the first window
        labels[:, 0] = int(cfg.labels.max_duration * cfg.sample_rate) - 1
        labels[:, 2] = cfg.sample_length
    upper = None
    if cfg.is_upsampler:
        upper = torch.zeros(batch, cfg.n_ctx // cfg.upsample_ratio, dtype=torch.long)
    return {"codes": codes, "labels": labels, "upper": upper}


def prior_step_memory(
    cfg: object, batch: int = 1, precision: str = "fp32", name: str = "prior"
) -> StepMemory:
    """:func:`step_memory` of one training step of the prior ``cfg`` at its window ``n_ctx``
    (fp32 weights, as ``train prior`` keeps them; the loss of ``Prior.forward``)."""
    from teacher.prior.model import Prior

    def loss(model: nn.Module) -> Tensor:
        x = prior_inputs(cfg, batch)
        return model(x["codes"], labels=x["labels"], upper=x["upper"]).loss

    return step_memory(name, lambda: Prior(cfg), loss, batch, cfg.n_ctx, precision)


def vqvae_step_memory(
    cfg: object, batch: int = 1, precision: str = "fp32", name: str = "vqvae"
) -> StepMemory:
    """:func:`step_memory` of one training step of the VQ-VAE ``cfg`` on crops of
    ``cfg.sample_length`` samples (all levels, the full Jukebox loss)."""
    from teacher.vqvae import VQVAE

    def loss(model: nn.Module) -> Tensor:
        return model(torch.zeros(batch, cfg.channels, cfg.sample_length)).loss

    return step_memory(name, lambda: VQVAE(cfg), loss, batch, cfg.sample_length, precision)
