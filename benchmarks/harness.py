"""What benchmarks/cpu.py and benchmarks/gpu.py share: the sizes every mode has, the UNet, the two training
contenders (hf_ddpm's own ``TrainingStep``, and a loop written like diffusers' ``train_unconditional.py``
example), the table, and the machine a run was measured on.

The hf_ddpm contender is the package's step itself, built by ``hf_ddpm.training.setup.build_setup`` as
``hf-ddpm train`` builds it (channels_last and fused Adam on CUDA, accelerate's autocast for
``--mixed-precision``, ``--compile``), and driven through ``TrainingStep.optimizer_step``; the benchmark
hands it its batches, so no dataset is read (the GPU image has no ``datasets``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The problem sizes of every benchmark mode; cpu.py and gpu.py each add their own."""

    resolution: int
    train_batch: int
    train_warmup: int
    train_steps: int
    sample_batch: int


def machine() -> dict[str, Any]:
    """Where the figures were measured: the CPU (model, cores, torch's threads), the GPU where there is
    one (name, memory, CUDA, the TF32 switches), the versions of torch, diffusers and Python, and the
    date (UTC)."""
    import diffusers

    cpu_model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu_model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A figure of the table, or n/a where it was not measured."""
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def render_table(rows: Iterable[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, the first row the header, underlined."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_unet(
    resolution: int,
    channels: int,
    *,
    preset: str | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Any:
    """The UNet2DModel of a ``hf-ddpm train`` preset, or of ``config``, seeded, in eval mode."""
    from hf_ddpm.training.unet_presets import build_unet as build
    from hf_ddpm.training.unet_presets import unet_config

    torch.manual_seed(seed)
    resolved = unet_config(
        preset, config, resolution=resolution, in_channels=channels, out_channels=channels
    )
    return build(resolved).to(device).eval()


class PackageTraining:
    """hf_ddpm's training step: ``TrainingStep.optimizer_step`` (forward, backward, clip, Adam, the LR
    schedule and the EMA) on a setup built by ``build_setup`` from these options, as ``hf-ddpm train``
    does per optimizer step, less data loading and logs."""

    def __init__(
        self,
        workdir: str,
        resolution: int,
        channels: int,
        batch: int,
        *,
        preset: str | None = None,
        unet_config: dict[str, Any] | None = None,
        mixed_precision: str = "no",
        compile_model: bool = False,
    ) -> None:
        from hf_ddpm.data.image_datasets import ImageDataset
        from hf_ddpm.training.setup import build_setup, make_accelerator
        from hf_ddpm.training.step import TrainingStep
        from hf_ddpm.training.train_config import TrainConfig

        options: dict[str, Any] = {}
        if unet_config is not None:
            path = os.path.join(workdir, "unet.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(unet_config, f)
            options["unet_config"] = path
        if preset is not None:
            options["model_preset"] = preset
        config = TrainConfig(
            resolution=resolution,
            batch_size=batch,
            mixed_precision=mixed_precision,
            compile=compile_model,
            output_dir=os.path.join(workdir, "hf_ddpm"),
            logger="none",
            checkpoint_every=0,
            sample_every=0,
            dataloader_num_workers=0,
            max_steps=10**9,
            **options,
        )
        config.validate()
        accelerator = make_accelerator(config)
        # The setup reads only the data's size, channels, classes and levels: the step is handed its
        # batches, and the images (``TrainingSetup.train_data``) are never read here.
        data = ImageDataset(
            dataset=range(batch),
            num_classes=None,
            channels=channels,
            num_bins=256,
            name="synthetic",
        )
        config, _ = config.with_scaled_defaults(len(data), accelerator.num_processes)
        self.setup = build_setup(config, accelerator, data)
        self.training_step = TrainingStep(self.setup)

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The UNet's starting weights, on the CPU, for a contender that must start from them."""
        return {k: v.detach().cpu().clone() for k, v in self.setup.unwrapped.state_dict().items()}

    def step(self, x0: torch.Tensor) -> torch.Tensor:
        """One optimizer step on ``x0``; the loss as a device tensor, as ``hf-ddpm train`` keeps it."""
        return self.training_step.optimizer_step(iter([{"pixel_values": x0}])).loss


class DiffusersExampleTraining:
    """A loop equivalent to diffusers' examples/unconditional_image_generation/train_unconditional.py.

    Per step: randn noise, uniform integer timesteps, ``DDPMScheduler.add_noise``, UNet forward, MSE to the
    noise, ``accelerator.backward``, grad-norm clip 1, optimizer and LR-scheduler step, zero_grad, EMAModel
    step with warm-up, and ``loss.item()`` for the log. One deviation, for identical work: the optimizer
    is ``Adam`` like hf_ddpm's (the example uses AdamW with weight decay 1e-6, which costs the same)."""

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        unet_config: dict[str, Any],
        mixed_precision: str = "no",
    ) -> None:
        from accelerate import Accelerator
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.accelerator = Accelerator(mixed_precision=mixed_precision)
        unet = UNet2DModel.from_config(unet_config)
        unet.load_state_dict(state)
        optimizer = torch.optim.Adam(unet.parameters(), lr=2e-4)
        lr_scheduler = get_scheduler(
            "cosine", optimizer, num_warmup_steps=500, num_training_steps=10**6
        )
        self.unet, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            unet, optimizer, lr_scheduler
        )
        self.ema = EMAModel(
            self.unet.parameters(),
            decay=0.9999,
            use_ema_warmup=True,
            inv_gamma=1.0,
            power=3 / 4,
            model_cls=UNet2DModel,
            model_config=unet.config,
        )
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.unet.train()

    def step(self, x0: torch.Tensor) -> float:
        import torch.nn.functional as F

        acc = self.accelerator
        noise = torch.randn(x0.shape, device=x0.device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device
        )
        noisy = self.noise_scheduler.add_noise(x0, noise, timesteps)
        with acc.accumulate(self.unet):
            output = self.unet(noisy, timesteps).sample
            loss = F.mse_loss(output.float(), noise.float())
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.unet.parameters(), 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if acc.sync_gradients:
            self.ema.step(self.unet.parameters())
        return loss.detach().item()
