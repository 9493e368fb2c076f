"""LoRA — low-rank adaptation of frozen weight matrices (thesis §3.3.2, eq. 3.17; Hu et al. 2021).

A frozen layer ``y = W0 x`` becomes ``y = W0 x + w·(α/r)·B A x``:

* ``A ∈ R^{r×k}`` ("down", ``lora_A``) starts as ``N(0, σ²)`` (σ = 1/r by default, or PyTorch's
  Kaiming-uniform init), ``B ∈ R^{d×r}`` ("up", ``lora_B``) starts at **zero**, so ΔW = BA = 0 and
  a fresh adapter leaves the network's outputs bit-identical (eq. 3.17 with the thesis's init);
* ``α/r`` is the usual scale (α defaults to r, i.e. scale 1); ``w`` is the user's strength, so
  several LoRAs can act at once with their own weights.

Design choice (differs from a wrapper module that replaces ``to_k`` by ``LoRALinear(to_k)``): the
adapters live in a separate :class:`LoRANetwork` and act on their host layers through forward
hooks. The host network keeps its exact module tree and state-dict keys (``…attn2.to_k.weight``),
so U-Net weights can still be saved/loaded by key (DreamBooth, key maps, ControlNet copies) while
a LoRA is attached, and any number of LoRAs stack additively on the same layer.

Targets are found by name: a regular expression (``re.fullmatch``) over the module names of each
component ("unet", "text_encoder"); condiff's U-Net uses diffusers' names, so the default
``cross-attention`` preset is ``…attn2.(to_q|to_k|to_v|to_out.0)``, the layers the thesis adapts.
Linear and Conv2d layers are supported (conv LoRA: A is a k×k conv to r channels, B a 1×1 conv).

Merging adds ``w·ΔW`` into ``W0`` in place (no hook cost at inference); the first merge on a layer
keeps a copy of ``W0`` so :meth:`LoRANetwork.unmerge` restores it exactly (bit for bit).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "TARGET_PRESETS",
    "LoRAConfig",
    "LoRAAdapter",
    "LoRANetwork",
    "resolve_targets",
    "find_target_modules",
]

#: Named target sets (regular expressions matched against full module names).
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    # U-Net cross-attention projections (the thesis / Cuenca & Sayak 2023 default)
    "cross-attention": (r".*\.attn2\.(to_q|to_k|to_v|to_out\.0)",),
    # self- and cross-attention projections
    "attention": (r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",),
    # attention + feed-forward + transformer projections (kohya's default "Transformer2DModel" set)
    "transformer": (
        r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
        r".*\.ff\.net\.(0\.proj|2)",
        r".*attentions\.\d+\.(proj_in|proj_out)",
    ),
    # text encoders: CLIP (q/k/v/out_proj) and BERT/MiniLM (query/key/value/attention.output.dense)
    "text-attention": (
        r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)",
        r".*attention\.self\.(query|key|value)",
        r".*attention\.output\.dense",
    ),
    # text encoders, attention + MLP
    "text-all": (
        r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)",
        r".*mlp\.(fc1|fc2)",
        r".*attention\.self\.(query|key|value)",
        r".*attention\.output\.dense",
        r".*intermediate\.dense",
        r".*layer\.\d+\.output\.dense",
    ),
}

_SUPPORTED = (nn.Linear, nn.Conv2d)


def resolve_targets(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name, a regular expression, or a list of them -> tuple of regular expressions."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError("LoRA targets are empty; name a preset or give module-name patterns")
    out: list[str] = []
    for item in items:
        if item in TARGET_PRESETS:
            out.extend(TARGET_PRESETS[item])
            continue
        try:
            re.compile(item)
        except re.error as err:
            raise ValueError(
                f"LoRA target {item!r} is neither a preset ({sorted(TARGET_PRESETS)}) nor a valid regex: {err}"
            ) from None
        out.append(item)
    return tuple(out)


def find_target_modules(root: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Module]:
    """Linear/Conv2d modules of ``root`` whose full name matches one of ``patterns`` (re.fullmatch)."""
    compiled = [re.compile(p) for p in patterns]
    found = {}
    for name, module in root.named_modules():
        if name and isinstance(module, _SUPPORTED) and any(c.fullmatch(name) for c in compiled):
            found[name] = module
    return found


@dataclass
class LoRAConfig:
    """Hyper-parameters of a new LoRA (eq. 3.17).

    ``targets`` maps a component name ("unet", "text_encoder") to a preset or regex list.
    ``alpha`` None means α = r (scale 1). ``init``: "gaussian" (A ~ N(0, σ²), σ = ``init_std`` or
    1/r; the thesis's init) or "kaiming" (PyTorch's Linear default, as PEFT does). ``dropout`` is
    applied to the adapter's input during training.
    """

    rank: int = 4
    alpha: float | None = None
    targets: dict[str, str | tuple[str, ...]] = field(default_factory=lambda: {"unet": "cross-attention"})
    init: str = "gaussian"
    init_std: float | None = None
    dropout: float = 0.0

    def validate(self) -> "LoRAConfig":
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if self.init not in ("gaussian", "kaiming"):
            raise ValueError(f"LoRA init must be 'gaussian' or 'kaiming', got {self.init!r}")
        if self.init_std is not None and not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRAConfig.targets is empty; e.g. {'unet': 'cross-attention'}")
        return self


class LoRAAdapter(nn.Module):
    """One low-rank update ΔW = (α/r)·B·A of a Linear or Conv2d host (eq. 3.17).

    ``down`` holds A (Linear ``[r, k]`` or Conv2d ``[r, k, kh, kw]`` with the host's stride and
    padding), ``up`` holds B (Linear ``[d, r]`` or 1×1 Conv2d ``[d, r, 1, 1]``).
    """

    def __init__(self, host: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0):
        super().__init__()
        if isinstance(host, nn.Linear):
            self.down = nn.Linear(host.in_features, rank, bias=False)
            self.up = nn.Linear(rank, host.out_features, bias=False)
        elif isinstance(host, nn.Conv2d):
            if host.groups != 1 or host.padding_mode != "zeros":
                raise ValueError("LoRA supports Conv2d hosts with groups=1 and zero padding only")
            self.down = nn.Conv2d(host.in_channels, rank, host.kernel_size, host.stride, host.padding,
                                  host.dilation, bias=False)
            self.up = nn.Conv2d(rank, host.out_channels, 1, bias=False)
        else:
            raise ValueError(f"LoRA hosts must be nn.Linear or nn.Conv2d, got {type(host).__name__}")
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.zeros_(self.up.weight)
        self.to(device=host.weight.device)

    @property
    def scale(self) -> float:
        """α / r."""
        return self.alpha / self.rank

    def reset(self, init: str = "gaussian", std: float | None = None, generator: torch.Generator | None = None) -> None:
        """A ~ N(0, σ²) (σ = 1/r by default) or Kaiming-uniform; B = 0."""
        with torch.no_grad():
            w = self.down.weight
            if init == "gaussian":
                sigma = std if std is not None else 1.0 / self.rank
                w.copy_(torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w) * sigma)
            elif init == "kaiming":
                cpu = torch.empty(w.shape, dtype=torch.float32)
                nn.init.kaiming_uniform_(cpu, a=math.sqrt(5), generator=generator)
                w.copy_(cpu.to(w))
            else:
                raise ValueError(f"unknown LoRA init {init!r}; use 'gaussian' or 'kaiming'")
            self.up.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(α/r)·B A x for a batch of host inputs."""
        dtype = self.down.weight.dtype
        return self.up(self.down(self.dropout(x.to(dtype)))) * self.scale

    def delta_weight(self) -> Tensor:
        """ΔW = (α/r)·B·A shaped like the host's weight (float32)."""
        a = self.down.weight.float()
        b = self.up.weight.float()
        if a.ndim == 2:
            return (b @ a) * self.scale
        r = a.shape[0]
        return (b.reshape(b.shape[0], r) @ a.reshape(r, -1)).reshape(b.shape[0], *a.shape[1:]) * self.scale


_W0_ATTR = "_condiff_lora_w0"  # backup of the original weight while any LoRA is merged into a host
_MERGED_ATTR = "_condiff_lora_merged"  # list of (network, adapter) merged into a host, in order


def _module_key(component: str, name: str) -> str:
    # nn.ModuleDict keys may not contain "."; "__" does not occur in diffusers/transformers names
    return f"{component}__{name.replace('.', '__')}"


class LoRANetwork(nn.Module):
    """A set of LoRA adapters on named layers of one or more components (a "LoRA file").

    Build one with :meth:`inject` (fresh, trainable) or :func:`condiff.personalize.lora_formats.load_lora`
    (from a file). It acts on its hosts once :meth:`attach`-ed; ``weight`` is its strength,
    :meth:`disable`/:meth:`enable` switch it off/on, :meth:`merge`/:meth:`unmerge` fold it into
    the host weights and back (exactly). Its ``parameters()`` are exactly the LoRA parameters.
    """

    def __init__(self, name: str = "lora"):
        super().__init__()
        self.name = name
        self.adapters = nn.ModuleDict()
        self._targets: dict[str, tuple[str, str, nn.Module]] = {}  # module key -> (component, name, host)
        self._handles: list = []
        self._weight = 1.0
        self._enabled = True
        self._merged = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def inject(
        cls,
        components: Mapping[str, nn.Module],
        config: LoRAConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        name: str = "lora",
        weight: float = 1.0,
    ) -> "LoRANetwork":
        """New adapters on every layer of ``components`` that ``config.targets`` selects; attached.

        ``components``: e.g. ``{"unet": unet, "text_encoder": clip_text_model}``. A component named
        in the targets but absent, or a pattern set that matches nothing, is a ValueError.
        """
        config = (config or LoRAConfig()).validate()
        net = cls(name)
        for component, spec in config.targets.items():
            if component not in components or components[component] is None:
                raise ValueError(
                    f"LoRA targets name component {component!r} but only {sorted(k for k, v in components.items() if v is not None)} "
                    "were given"
                )
            root = components[component]
            hosts = find_target_modules(root, resolve_targets(spec))
            if not hosts:
                examples = [n for n, m in root.named_modules() if isinstance(m, _SUPPORTED)][:8]
                raise ValueError(
                    f"LoRA targets {spec!r} match no Linear/Conv2d layer of {component!r}; "
                    f"layer names look like {examples}"
                )
            for module_name, host in hosts.items():
                adapter = net.add(component, module_name, host, config.rank, config.alpha, dropout=config.dropout)
                adapter.reset(config.init, config.init_std, generator)
        net.attach(weight)
        return net

    def add(self, component: str, module_name: str, host: nn.Module, rank: int, alpha: float | None = None,
            *, dropout: float = 0.0) -> LoRAAdapter:
        """Register an adapter (B = 0, A = 0 until :meth:`LoRAAdapter.reset` or weights are copied in)."""
        if self._handles or self._merged:
            raise ValueError("detach (and unmerge) the LoRA before adding adapters to it")
        key = _module_key(component, module_name)
        if key in self.adapters:
            raise ValueError(f"the LoRA already has an adapter on {component}.{module_name}")
        adapter = LoRAAdapter(host, rank, alpha, dropout)
        with torch.no_grad():
            adapter.down.weight.zero_()
        self.adapters[key] = adapter
        self._targets[key] = (component, module_name, host)
        return adapter

    # ------------------------------------------------------------------ inspection
    def items(self) -> Iterator[tuple[str, str, nn.Module, LoRAAdapter]]:
        """(component, module name, host layer, adapter) for every adapter."""
        for key, adapter in self.adapters.items():
            component, module_name, host = self._targets[key]
            yield component, module_name, host, adapter

    def get(self, component: str, module_name: str) -> LoRAAdapter:
        key = _module_key(component, module_name)
        if key not in self.adapters:
            raise KeyError(f"no LoRA adapter on {component}.{module_name}")
        return self.adapters[key]

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def components(self) -> list[str]:
        return sorted({c for c, _, _ in self._targets.values()})

    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"LoRA weight must be finite, got {value}")
        if self._merged:
            self.unmerge()
            self._weight = value
            self.merge()
        else:
            self._weight = value

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def merged(self) -> bool:
        return self._merged

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ acting on the hosts
    def _make_hook(self, adapter: LoRAAdapter):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            if not self._enabled or self._merged or self._weight == 0.0:
                return None
            delta = adapter(args[0])
            return output + (self._weight * delta).to(output.dtype)

        return hook

    def attach(self, weight: float | None = None) -> "LoRANetwork":
        """Start acting on the host layers (idempotent); optionally set the strength."""
        if weight is not None:
            self.weight = weight
        if not self._handles:
            for _, _, host, adapter in self.items():
                self._handles.append(host.register_forward_hook(self._make_hook(adapter)))
        return self

    def detach(self) -> "LoRANetwork":
        """Stop acting on the hosts (unmerges first). The adapters keep their weights."""
        if self._merged:
            self.unmerge()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return self

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        """Outputs become those of the base model (a merged LoRA is unmerged first)."""
        if self._merged:
            self.unmerge()
        self._enabled = False

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + w·ΔW for every host (no per-call cost afterwards); exact undo with :meth:`unmerge`."""
        if self._merged:
            return
        if not self._enabled:
            raise ValueError("this LoRA is disabled; enable() it before merging")
        for _, _, host, adapter in self.items():
            merged = getattr(host, _MERGED_ATTR, None)
            if merged is None:
                setattr(host, _W0_ATTR, host.weight.detach().clone())
                merged = []
                setattr(host, _MERGED_ATTR, merged)
            host.weight.add_((self._weight * adapter.delta_weight()).to(host.weight))
            merged.append((self, adapter))
        self._merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: W0 is restored bit for bit (other merged LoRAs are re-applied)."""
        if not self._merged:
            return
        for _, _, host, adapter in self.items():
            merged = getattr(host, _MERGED_ATTR)
            w0 = getattr(host, _W0_ATTR)
            remaining = [(n, a) for n, a in merged if a is not adapter]
            host.weight.copy_(w0.to(host.weight.device))
            for net, other in remaining:
                host.weight.add_((net.weight * other.delta_weight()).to(host.weight))
            if remaining:
                setattr(host, _MERGED_ATTR, remaining)
            else:
                delattr(host, _MERGED_ATTR)
                delattr(host, _W0_ATTR)
        self._merged = False

    def freeze_hosts(self) -> None:
        """requires_grad=False on every host parameter (the base weights stay locked, eq. 3.17)."""
        for _, _, host, _ in self.items():
            host.requires_grad_(False)
