"""What the Analytic-DPM tests share: the Gaussian-mixture oracle of their data, a tiny pipeline, and
schedulers with a chosen variance, spacing and Gamma_n.
"""

from gaussian_oracle import MixtureOracle


def _mixture(ab):
    return MixtureOracle([-0.5, 0.4], [0.1, 0.15], [0.4, 0.6], ab)


def _tiny_pipeline(num_class_embeds=None, null_class_label=None):
    from conftest import _tiny_unet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    unet = _tiny_unet(in_channels=1, num_class_embeds=num_class_embeds)
    return HFDDPMPipeline(
        unet, HFDDPMScheduler(num_train_timesteps=10), null_class_label=null_class_label
    )


def _scheduler(variance_type, spacing="leading", gamma=None, **kwargs):
    from hf_ddpm import HFDDPMScheduler

    return HFDDPMScheduler(
        variance_type=variance_type,
        timestep_spacing=spacing,
        eps_second_moment=None if gamma is None else list(gamma),
        clip_sample=False,
        **kwargs,
    )
