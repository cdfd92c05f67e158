"""A calibrated model through the Hub and through remote code: pushed back by hf-ddpm calibrate, and sampled
with the analytic variance where hf_ddpm is absent.

Moved from tests/evaluation/test_analytic_dpm.py (issue 18: tests mirror the package).
"""

import numpy as np
import torch
from analytic_oracle_helpers import _mixture, _tiny_pipeline


def test_calibrate_a_hub_model_and_push_it_back(hub_server, tmp_path, capsys):
    """From a Hub repo id to a calibrated folder and back: the pushed scheduler config carries the
    moments, and loading the repo gives an analytic-ready scheduler."""
    import json

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
    from hf_ddpm.cli import main

    _tiny_pipeline().push_to_hub("tester/tiny-ddpm")
    output = tmp_path / "calibrated"
    argv = ["calibrate", "tester/tiny-ddpm", "--dataset", "mnist-5k", "--num-images", "2"]
    argv += ["--output", str(output)]
    assert main([*argv, "--set-default", "--push-to-hub"]) == 0
    assert "pushed" in capsys.readouterr().out
    pushed = json.loads(hub_server.files("tester/tiny-ddpm")["scheduler/scheduler_config.json"])
    assert len(pushed["eps_second_moment"]) == 10 and pushed["variance_type"] == "analytic"
    loaded = HFDDPMPipeline.from_pretrained("tester/tiny-ddpm", cache_dir=tmp_path / "cache")
    assert isinstance(loaded.scheduler, HFDDPMScheduler)
    assert loaded.scheduler.config.eps_second_moment == pushed["eps_second_moment"]
    images = loaded(batch_size=1, num_inference_steps=3, output_type="pt").images
    assert torch.isfinite(images).all()


def test_remote_code_copy_samples_with_the_analytic_variance(tmp_path, run_without_hf_ddpm):
    """A calibrated model saved with variance_type='analytic' and the optimal spacing loads through
    diffusers' remote code where hf_ddpm cannot be imported, and samples as the installed package does."""
    import textwrap

    from hf_ddpm import HFDDPMScheduler

    pipeline = _tiny_pipeline()
    gamma = _mixture(pipeline.scheduler.alphas_cumprod.double().numpy()).eps_second_moment()
    pipeline.scheduler = HFDDPMScheduler.from_config(
        pipeline.scheduler.config,
        variance_type="analytic",
        timestep_spacing="optimal",
        eps_second_moment=gamma.tolist(),
    )
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=4,
        output_type="np",
    ).images
    pipeline.save_pretrained(tmp_path / "saved")
    run_without_hf_ddpm(
        textwrap.dedent(f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads(1)
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        assert pipe.scheduler.config.variance_type == "analytic"
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                      output_type="np").images
        np.save({str(tmp_path / "remote.npy")!r}, images)
        """)
    )
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)
