"""NLL estimators (exact loop, importance sampling) and the `hf-ddpm evaluate` command."""

import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_ddpm.evaluation.features import FID_INSTALL
from hf_ddpm.evaluation.nll import (
    exact_nll,
    importance_sampled_bound,
    importance_sampled_nll,
    proposal_probabilities,
)

# ---------------------------------------------------------------------------------------------------------
# A scheduler whose terms are known exactly: L_t(x0) = c_t * (1 + mean(x0^2)), prior = 0.01. Then the bound
# is sum_t c_t * (1 + mean(x0^2)) + 0.01, an analytic oracle for both estimators.


class _KnownTermsScheduler:
    def __init__(self, coefficients):
        self.c = torch.as_tensor(coefficients, dtype=torch.float64)
        self.config = types.SimpleNamespace(num_train_timesteps=len(coefficients))

    def add_noise(self, x0, noise, t):
        return x0 + 0 * noise

    def vlb_terms_bpd(self, model_output, x0, x_t, t, num_bins=256):
        assert model_output.shape == x_t.shape
        return self.c[t] * (1 + x0.double().flatten(1).pow(2).mean(1))

    def prior_bpd(self, x0):
        return torch.full((x0.shape[0],), 0.01, dtype=torch.float64)

    def oracle(self, x0):
        return self.c.sum() * (1 + x0.double().flatten(1).pow(2).mean(1)) + 0.01


ROOT = Path(__file__).resolve().parents[2]


def _identity_model(x_t, t):
    return x_t


def _known():
    return _KnownTermsScheduler(np.geomspace(2.0, 0.01, 12))


def test_exact_loop_matches_the_analytic_sum():
    sched = _known()
    x0 = torch.rand(5, 1, 4, 4) * 2 - 1
    result = exact_nll(_identity_model, sched, x0.split(2), max_batch_size=7)
    np.testing.assert_allclose(result.per_image_bpd, sched.oracle(x0).numpy(), rtol=1e-12)
    assert (
        result.num_images == 5 and result.estimator == "exact" and result.timesteps_per_image == 12
    )
    scale = 1 + x0.double().flatten(1).pow(2).mean(1)
    assert result.distortion_bpd == pytest.approx(float((sched.c[0] * scale).mean()))
    assert result.rate_bpd == pytest.approx(float((sched.c[1:].sum() * scale).mean()))
    assert result.prior_bpd == pytest.approx(0.01)
    expected_se = sched.oracle(x0).std().item() / 5**0.5
    assert result.bpd_stderr == pytest.approx(expected_se)


def test_importance_sampling_with_the_optimal_proposal_has_zero_variance():
    # q(t) proportional to L_t: every draw of L_t / q(t) equals sum_t L_t exactly
    sched = _known()
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    est = importance_sampled_bound(
        _identity_model,
        sched,
        x0,
        num_timesteps=3,
        proposal=sched.c.numpy(),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(est["total"], sched.oracle(x0))


def test_importance_sampling_is_unbiased_for_uniform_and_skewed_proposals():
    sched = _known()
    x0 = torch.full((1, 1, 2, 2), 0.5).expand(4000, -1, -1, -1)
    exact = float(sched.oracle(x0[:1]))
    scale = 1.25  # 1 + mean(x0^2)
    for proposal in (None, np.linspace(1.0, 3.0, 12)):  # the second one favours the *small* terms
        gen = torch.Generator().manual_seed(1)
        est = importance_sampled_bound(
            _identity_model, sched, x0, 2, proposal, gen, max_batch_size=1000
        )
        se = float(est["total"].std() / len(x0) ** 0.5)
        assert se > 0
        assert abs(float(est["total"].mean()) - exact) < 5 * se, (proposal, est["total"].mean())
        # the decoder term is evaluated for every image, not sampled
        expected_distortion = torch.full((len(x0),), float(sched.c[0]) * scale, dtype=torch.float64)
        torch.testing.assert_close(est["distortion"], expected_distortion)


def test_importance_sampled_nll_summary():
    sched = _known()
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    result = importance_sampled_nll(
        _identity_model, sched, x0.split(4), 5, proposal=sched.c.numpy()
    )
    np.testing.assert_allclose(result.per_image_bpd, sched.oracle(x0).numpy())
    assert result.estimator == "importance-sampled" and result.timesteps_per_image == 5
    assert "per_image_bpd" not in result.to_dict()


def test_proposal_validation():
    f64 = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(proposal_probabilities(4), f64([0, 1 / 3, 1 / 3, 1 / 3]))
    # entry 0 (the decoder term, always evaluated) is ignored
    torch.testing.assert_close(proposal_probabilities(3, [5.0, 1.0, 3.0]), f64([0, 0.25, 0.75]))
    sampler = types.SimpleNamespace(probabilities=lambda: np.array([0.2, 0.4, 0.4]))
    torch.testing.assert_close(proposal_probabilities(3, sampler), f64([0, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        proposal_probabilities(3, [1.0, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        proposal_probabilities(3, [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=">= 2"):
        proposal_probabilities(1)
    with pytest.raises(ValueError, match="K"):
        importance_sampled_bound(_identity_model, _known(), torch.zeros(1, 1, 2, 2), 0)


# ---------------------------------------------------------------------------------------------------------
# The real bound: a tiny UNet with HFDDPMScheduler. Both estimators are noisy; their means must agree.


def _tiny_unet(seed=0):
    from conftest import _tiny_unet

    return _tiny_unet(in_channels=1, seed=seed)


def test_importance_sampled_estimate_agrees_with_the_exact_loop_on_a_tiny_unet():
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    unet, sched = _tiny_unet(), HFDDPMScheduler(num_train_timesteps=10)
    image = (
        torch.randint(0, 256, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 255
    ) * 2 - 1
    # rows are independent draws of each estimator for one image
    reps = image.expand(120, -1, -1, -1)
    gen = torch.Generator().manual_seed(0)
    exact = exact_nll(unet, sched, [reps], generator=gen, max_batch_size=1500)
    assert exact.rate_bpd > 0 and exact.distortion_bpd > 0 and exact.prior_bpd > 0
    # the per-term means of the exact loop make a near-optimal proposal
    from hf_ddpm import variational_bound

    term_means = variational_bound(unet, sched, reps[:10], generator=gen).terms_bpd.mean(0)
    variances = {}
    for name, proposal in (("uniform", None), ("term-means", term_means.numpy())):
        est = importance_sampled_nll(
            unet, sched, [reps], 1, proposal, generator=gen, max_batch_size=1500
        )
        se = np.hypot(est.bpd_stderr, exact.bpd_stderr)
        assert abs(est.bpd - exact.bpd) < 4 * se, (name, est.bpd, exact.bpd, se)
        variances[name] = est.per_image_bpd.var()
    assert variances["term-means"] < variances["uniform"]


# ---------------------------------------------------------------------------------------------------------
# The command and the Python API, end to end on a tiny pipeline, the bundled mnist-5k test split and a tiny
# random DINOv2.


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    from diffusers import DDPMScheduler

    from hf_ddpm.core.pipeline import HFDDPMPipeline

    # saved with diffusers' scheduler, as google/ddpm-* repos are; loading converts it to HFDDPMScheduler
    folder = tmp_path_factory.mktemp("pipe")
    HFDDPMPipeline(_tiny_unet(), DDPMScheduler(num_train_timesteps=10)).save_pretrained(folder)
    return folder


def test_cli_end_to_end(saved_pipeline, tiny_dinov2_dir, tmp_path, capsys):
    import json

    from PIL import Image

    from hf_ddpm import variational_bound
    from hf_ddpm.cli import main
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.data.image_datasets import collate, load_image_dataset, preprocess
    from hf_ddpm.evaluation.features import DinoV2Features
    from hf_ddpm.evaluation.frechet import feature_statistics, frechet_distance
    from hf_ddpm.sampling.sharding import image_seed

    out = tmp_path / "eval" / "report.json"
    argv = [
        "evaluate",
        str(saved_pipeline),
        "--dataset",
        "mnist-5k",
        "--metrics",
        "nll,fd-dinov2",
        "--dinov2-model",
        tiny_dinov2_dir,
        "--num-samples",
        "6",
        "--batch-size",
        "6",
        "--max-reference-images",
        "12",
        "--seed",
        "3",
        "--output",
        str(out),
        "--grid",
        str(out.with_suffix(".png")),
        "--stats-cache-dir",
        str(tmp_path / "stats"),
        "--device",
        "cpu",
    ]
    with pytest.warns(UserWarning, match="6 samples of 16-dimensional features"):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "NLL (bits/dim)" in printed and "FD_DINOv2" in printed and "rate" in printed
    report = json.loads(out.read_text())
    assert report["seed"] == 3 and report["num_samples"] == 6
    assert report["settings"]["num_bins"] == 256 and report["settings"]["split"] == "test"
    assert report["settings"]["dataset"] == "mnist-5k" and report["model"] == str(saved_pipeline)
    with Image.open(report["sample_grid"]) as grid:
        assert grid.size == (3 * 8, 2 * 8)  # 6 images of 8x8 in a 3x2 grid
    assert report["settings"]["grid_inference_steps"] == 10  # the Fréchet samples, reused
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 1

    # recompute both numbers along an independent path: the lead's bound, and features by hand
    pipe = HFDDPMPipeline.from_pretrained(saved_pipeline)
    data = load_image_dataset("mnist-5k", split="test")
    ds = preprocess(data, 8)
    x0 = collate([ds[i] for i in range(12)])["pixel_values"]
    # batch b's noise comes from its own generator, seeded by (seed, b): the same on any process count
    bounds = [
        variational_bound(
            pipe.unet, pipe.scheduler, x, generator=torch.Generator().manual_seed(image_seed(3, b))
        )
        for b, x in enumerate(x0.split(6))
    ]
    nll = report["metrics"]["nll"]
    assert nll["bpd"] == pytest.approx(
        float(torch.cat([b.total_bpd for b in bounds]).mean()), rel=1e-6
    )
    distortion = torch.cat([b.terms_bpd[:, 0] for b in bounds]).mean()
    assert nll["distortion_bpd"] == pytest.approx(float(distortion), rel=1e-6)
    assert nll["num_images"] == 12 and nll["estimator"] == "exact"

    # image i from its own generator, scored as the 8-bit image a sample folder holds
    samples = pipe(
        batch_size=6,
        generator=[torch.Generator().manual_seed(image_seed(3, i)) for i in range(6)],
        num_inference_steps=10,
        output_type="pt",
    ).images
    samples = torch.round(samples * 255) / 255
    extractor = DinoV2Features(tiny_dinov2_dir, device="cpu")
    with pytest.warns(UserWarning):
        expected = frechet_distance(
            feature_statistics(extractor(samples)), feature_statistics(extractor((x0 + 1) / 2))
        )
    assert report["metrics"]["fd-dinov2"]["value"] == pytest.approx(expected, rel=1e-5)


def test_cli_bad_input(saved_pipeline, tmp_path, capsys):
    from hf_ddpm.cli import main

    (tmp_path / "not_a_pipeline").mkdir()
    assert main(["evaluate", str(tmp_path / "not_a_pipeline"), "--metrics", "nll"]) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert main(["evaluate", str(saved_pipeline), "--metrics", "nll,is"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric(s) ['is']" in err and "nll, fid, fd-dinov2" in err
    assert main(["evaluate", str(saved_pipeline), "--metrics", "nll", "--push-to-hub"]) == 2
    assert "--hub-model-id" in capsys.readouterr().err


def test_python_api_rejects_too_few_samples_and_wrong_resolution(saved_pipeline):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.evaluation.evaluate import ReferenceData, evaluate_pipeline

    pipe = HFDDPMPipeline.from_pretrained(saved_pipeline)
    ref = ReferenceData(torch.zeros(4, 1, 8, 8), 256, "zeros", "test")
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate_pipeline(pipe, ref, metrics="fd-dinov2", num_samples=1, extractors={})
    with pytest.raises(ValueError, match="16px"):
        evaluate_pipeline(
            pipe, ReferenceData(torch.zeros(4, 1, 16, 16), 256, "z", "test"), metrics="nll"
        )


def _report(nll_bpd, fid):
    return {
        "metrics": {"nll": {"bpd": nll_bpd}, "fid": {"value": fid}},
        "settings": {"dataset": "mnist-5k", "split": "test"},
    }


def test_push_metrics_updates_the_model_index(hub_server):
    import yaml
    from huggingface_hub import HfApi

    from hf_ddpm.hub.metrics_card import push_metrics_to_hub

    api = HfApi()
    api.create_repo("tester/tiny")
    api.upload_file(
        path_or_fileobj=b"---\nlicense: apache-2.0\ntags:\n- ddpm\n---\n# tiny\n",
        path_in_repo="README.md",
        repo_id="tester/tiny",
    )
    push_metrics_to_hub("tester/tiny", _report(3.71234, 13.5))
    push_metrics_to_hub("tester/tiny", _report(3.70001, 12.25))  # replaces, does not append

    card = hub_server.files("tester/tiny")["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["tags"] == ["ddpm"] and "# tiny" in card
    (entry,) = front["model-index"]
    metrics = {m["type"]: m["value"] for r in entry["results"] for m in r["metrics"]}
    assert metrics == {"nll_bpd": 3.7, "fid": 12.25}
    (result,) = entry["results"]
    assert result["dataset"] == {"name": "mnist-5k", "type": "mnist-5k", "split": "test"}
    assert result["task"]["type"] == "unconditional-image-generation"


class _MeanPoolInception(torch.nn.Module):
    """Stands in for the FID network (its weights cannot be downloaded here): uint8 RGB -> 6 features."""

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        x = x.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)


def test_python_api_fid_path_and_sampled_nll(saved_pipeline, tmp_path):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.evaluation.evaluate import ReferenceData, evaluate_pipeline, format_table
    from hf_ddpm.evaluation.features import InceptionFeatures
    from hf_ddpm.evaluation.frechet import feature_statistics, frechet_distance

    pipe = HFDDPMPipeline.from_pretrained(saved_pipeline)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 8, 8), generator=gen) / 255 * 2 - 1
    ref = ReferenceData(images, 256, "random", "test")
    extractor = InceptionFeatures(module=_MeanPoolInception(), device="cpu")
    kwargs = dict(
        metrics="fid,nll",
        num_samples=8,
        batch_size=4,
        seed=5,
        nll_timesteps=3,
        nll_proposal_images=4,
    )
    report = evaluate_pipeline(
        pipe, ref, **kwargs, extractors={"fid": extractor}, stats_cache_dir=tmp_path
    )
    assert report["metrics"]["nll"]["estimator"] == "importance-sampled"
    assert report["metrics"]["nll"]["timesteps_per_image"] == 3
    expected = "importance-sampled (K=3, q(t): term means of 4 images)"
    assert report["settings"]["nll_estimator"] == expected
    assert "FID" in format_table(report) and report["sample_grid"] is None

    # recompute independently: image i from its own generator, all in one batch, features by hand
    from hf_ddpm.sampling.sharding import image_seed

    generators = [torch.Generator().manual_seed(image_seed(5, i)) for i in range(8)]
    samples = pipe(
        batch_size=8, generator=generators, num_inference_steps=10, output_type="pt"
    ).images
    to_uint8 = lambda x: (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)  # noqa: E731
    ref_stats = feature_statistics(_MeanPoolInception()(to_uint8((images + 1) / 2)))
    gen_stats = feature_statistics(_MeanPoolInception()(to_uint8(samples)))
    fid = report["metrics"]["fid"]
    assert fid["num_samples"] == 8 and fid["num_reference"] == 10 and fid["feature_dim"] == 6
    assert fid["value"] == pytest.approx(frechet_distance(gen_stats, ref_stats), rel=1e-6)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # the same seed gives the same report
    again = evaluate_pipeline(
        pipe, ref, **kwargs, extractors={"fid": extractor}, stats_cache_dir=tmp_path
    )
    assert again["metrics"] == report["metrics"]


def test_cli_fid_without_its_network_fails_early_and_clearly(
    saved_pipeline, tmp_path, monkeypatch, capsys
):
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    from hf_ddpm.cli import main

    monkeypatch.delenv("HF_DDPM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = [
        "evaluate",
        str(saved_pipeline),
        "--metrics",
        "fid",
        "--output",
        str(tmp_path / "r.json"),
    ]
    if _TORCH_FIDELITY_AVAILABLE:
        argv += ["--inception-weights", str(tmp_path / "missing.pth")]
        expected = "missing.pth"
    else:
        expected = "torch-fidelity is not installed: " + FID_INSTALL
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_cli_fid_without_torchmetrics_names_what_to_install(
    saved_pipeline, tmp_path, monkeypatch, capsys
):
    """Without torchmetrics (the eval extra) --metrics fid said only "No module named 'torchmetrics'":
    one line now names the extra, torch-fidelity and the Inception weights, and the exit status is 2."""
    import sys

    from hf_ddpm.cli import main

    # None in sys.modules makes every import of torchmetrics fail, as where it is not installed.
    for name in [n for n in sys.modules if n.split(".")[0] == "torchmetrics"] + ["torchmetrics"]:
        monkeypatch.setitem(sys.modules, name, None)
    argv = ["evaluate", str(saved_pipeline), "--metrics", "fid", "--output", str(tmp_path / "r")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-ddpm evaluate: error: "), lines
    for words in ("torchmetrics is not installed", "pip install -e '.[eval]' torch-fidelity"):
        assert words in lines[0]
    assert "Inception weights" in lines[0] and "--inception-weights" in lines[0]
    # The extra it names is the one of pyproject.toml that holds torchmetrics.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(requirement.startswith("torchmetrics") for requirement in extras["eval"])


def test_nll_of_a_class_conditional_model_is_that_of_its_null_label(tmp_path):
    """For a UNet trained for classifier-free guidance, p(x) is the model given the null label."""
    from conftest import _tiny_unet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, variational_bound
    from hf_ddpm.evaluation.evaluate import ReferenceData, evaluate_pipeline

    unet = _tiny_unet(in_channels=1, num_class_embeds=3)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=8))
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    report = evaluate_pipeline(
        pipe, ReferenceData(images, 256, "random", "test"), metrics="nll", seed=5
    )

    def null_label_model(x_t, t):
        return unet(x_t, t, class_labels=torch.full((x_t.shape[0],), 2)).sample

    from hf_ddpm.sampling.sharding import image_seed

    generator = torch.Generator().manual_seed(image_seed(5, 0))  # batch 0's own
    expected = variational_bound(null_label_model, pipe.scheduler, images, generator=generator)
    assert report["metrics"]["nll"]["bpd"] == pytest.approx(
        expected.total_bpd.mean().item(), rel=1e-5
    )


@pytest.fixture(scope="module")
def long_chain_pipeline(tmp_path_factory):
    """T = 200: long enough that a preview grid in fewer steps differs from one in T steps."""
    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    folder = tmp_path_factory.mktemp("pipe200")
    HFDDPMPipeline(_tiny_unet(), HFDDPMScheduler(num_train_timesteps=200)).save_pretrained(folder)
    return folder


def _spy_on_sampling(monkeypatch):
    from hf_ddpm import HFDDPMPipeline

    calls = []
    original = HFDDPMPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFDDPMPipeline, "__call__", spy)
    return calls


def _nll_argv(model, tmp_path, *extra):
    return [
        "evaluate",
        str(model),
        "--dataset",
        "mnist-5k",
        "--metrics",
        "nll",
        "--max-reference-images",
        "2",
        "--batch-size",
        "1",
        "--output",
        str(tmp_path / "r.json"),
        *extra,
    ]


def test_nll_alone_draws_no_samples_and_its_bar_has_a_total(
    long_chain_pipeline, tmp_path, monkeypatch, capsys
):
    """Issue 14 item 2: --metrics nll used to draw a 64-image grid at T steps, and its bar had no total."""
    import json

    from hf_ddpm.cli import main

    calls = _spy_on_sampling(monkeypatch)
    assert main(_nll_argv(long_chain_pipeline, tmp_path)) == 0
    assert calls == []
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["sample_grid"] is None and report["settings"]["grid_inference_steps"] is None
    assert not list(tmp_path.glob("*.png"))
    assert "NLL (exact)" in capsys.readouterr().err


def _record_bars(monkeypatch):
    """The progress bars the NLL opens, kept for their desc, total and final count."""
    from tqdm.auto import tqdm

    import hf_ddpm.evaluation.nll as nll

    bars = []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(nll, "tqdm", Recording)
    return bars


def test_the_exact_nll_bar_counts_its_terms_and_the_report_names_the_bounds_variance(
    tmp_path, monkeypatch
):
    """The exact NLL showed one bar over batches ("1/1 [00:55]", nothing until the end) and the report
    said variance_type: null. Now one bar counts the terms (an image at a timestep) to its total, and
    the nll metric records the variance its bound used: the model's scheduler's, not the samples'."""
    import json

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
    from hf_ddpm.cli import main

    model = tmp_path / "model"
    scheduler = HFDDPMScheduler(num_train_timesteps=30, variance_type="fixed_large")
    HFDDPMPipeline(_tiny_unet(), scheduler).save_pretrained(model)
    bars = _record_bars(monkeypatch)
    argv = [*_nll_argv(model, tmp_path), "--max-reference-images", "3", "--batch-size", "2"]
    assert main(argv) == 0
    # 3 images in batches of 2 and 1, 30 terms each: one bar to 90, not one per batch.
    assert [(bar.desc, bar.total, bar.n) for bar in bars] == [("NLL (exact)", 90, 90)]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["nll"]["variance_type"] == "fixed_large"
    assert report["settings"]["variance_type"] is None  # nothing was drawn
    # Samples drawn with another variance leave the bound's as it was.
    grid = ["--grid", str(tmp_path / "g.png"), "--num-samples", "1", "--num-inference-steps", "3"]
    assert main([*argv, *grid, "--variance-type", "fixed_small"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["nll"]["variance_type"] == "fixed_large"
    assert report["settings"]["variance_type"] == "fixed_small"


def test_the_bound_reports_each_network_call_to_the_bar(monkeypatch):
    """Within one batch the bar moves with every network call: 4 images x 12 timesteps, 2 timesteps (8
    inputs) per call, is 6 updates of 8 terms."""
    bars = _record_bars(monkeypatch)
    updates = []
    scheduler = _known()
    x0 = torch.zeros(4, 1, 2, 2)
    exact_nll(_identity_model, scheduler, [x0], max_batch_size=8, progress=updates.append)
    assert updates == [8] * 6 and bars == []  # the caller's bar, not one of its own
    exact_nll(_identity_model, scheduler, [x0, x0[:1]], max_batch_size=8)
    assert [(bar.total, bar.n) for bar in bars] == [(5 * 12, 5 * 12)]
    importance_sampled_nll(_identity_model, scheduler, [x0], num_timesteps=3, max_batch_size=8)
    assert (bars[-1].desc, bars[-1].total, bars[-1].n) == ("NLL (K=3)", 4 * 4, 4 * 4)


def test_grid_when_asked_is_a_preview_in_few_steps(
    long_chain_pipeline, tmp_path, monkeypatch, capsys
):
    import json

    from PIL import Image

    from hf_ddpm.cli import main
    from hf_ddpm.sampling.samplers import DEFAULT_SAMPLING_STEPS

    calls = _spy_on_sampling(monkeypatch)
    grid = tmp_path / "grid.png"
    argv = _nll_argv(long_chain_pipeline, tmp_path, "--grid", str(grid), "--num-samples", "4")
    assert main(argv) == 0
    assert [c["num_inference_steps"] for c in calls] == [DEFAULT_SAMPLING_STEPS] * 4  # batch size 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["grid_inference_steps"] == DEFAULT_SAMPLING_STEPS < 200
    assert report["sample_grid"] == str(grid) and Image.open(grid).size == (16, 16)
    assert "sampling" in capsys.readouterr().err  # its own progress bar

    calls.clear()
    argv = _nll_argv(long_chain_pipeline, tmp_path, "--grid", str(grid), "--num-samples", "1")
    assert main([*argv, "--num-inference-steps", "7"]) == 0
    assert [c["num_inference_steps"] for c in calls] == [7]
    assert main([*argv, "--no-grid"]) == 0 and len(calls) == 1


def test_evaluation_options_are_checked_once_and_can_be_overridden(saved_pipeline):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.evaluation.evaluate import EvaluationOptions, ReferenceData, evaluate_pipeline

    options = EvaluationOptions(metrics="NLL, nll", seed=4)
    assert options.metrics == ("nll",) and options.frechet_metrics == ()
    for bad, words in (
        ({"batch_size": 0}, "--batch-size"),
        ({"nll_timesteps": 0}, "--nll-timesteps"),
        ({"nll_proposal_images": -1}, "--nll-proposal-images"),
        ({"metrics": "fid", "num_samples": 1}, "--num-samples"),
        ({"metrics": ""}, "no metric given"),
    ):
        with pytest.raises(ValueError, match=words):
            EvaluationOptions(**bad)

    pipe = HFDDPMPipeline.from_pretrained(saved_pipeline)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = ReferenceData(images, 256, "random", "test")
    report = evaluate_pipeline(pipe, reference, options, batch_size=1)
    assert report["seed"] == 4 and report["settings"]["batch_size"] == 1
    with pytest.raises(
        ValueError, match=r"num_inference_steps \(--num-inference-steps\) must be in 1..10"
    ):
        evaluate_pipeline(pipe, reference, options, num_inference_steps=11)
    with pytest.raises(TypeError):
        evaluate_pipeline(pipe, reference, options, no_such_option=1)


@pytest.mark.parametrize("flag", ["--samples", "--samples-dir"])
def test_samples_flags_without_a_frechet_metric_are_refused(saved_pipeline, tmp_path, capsys, flag):
    """--samples (and --samples-dir) hold the Fréchet metrics' samples: with --metrics nll alone they were
    silently ignored (and the report recorded --samples); now one line names the flags, exit 2."""
    from hf_ddpm.cli import main
    from hf_ddpm.evaluation.evaluate import EvaluationOptions

    output = tmp_path / "r.json"
    argv = ["evaluate", str(saved_pipeline), "--dataset", "mnist-5k", "--max-reference-images", "2"]
    argv += ["--metrics", "nll", flag, str(tmp_path / "s"), "--output", str(output)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hf-ddpm evaluate: error: {flag} "), lines
    assert "--metrics nll has none" in lines[0] and "fid, fd-dinov2" in lines[0]
    assert not output.exists()
    field = flag.removeprefix("--").replace("-", "_")
    with pytest.raises(ValueError, match=f"{flag} hold the samples of the Fréchet metrics"):
        EvaluationOptions(metrics="nll", **{field: tmp_path / "s"})
    # With a Fréchet metric the flag is taken.
    assert getattr(EvaluationOptions(metrics="nll,fid", **{field: tmp_path / "s"}), field)


def test_a_folder_with_an_unreadable_image_is_refused_unless_skip_bad_images(
    saved_pipeline, tmp_path, capsys
):
    """The hint in the unreadable-image error names a flag evaluate itself takes."""
    import json

    from PIL import Image

    from hf_ddpm.cli import main

    held_out = tmp_path / "data" / "test"
    held_out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(held_out / f"a{i}.png")
    (held_out / "bad.png").write_bytes(b"not a png")
    argv = _nll_argv(
        saved_pipeline, tmp_path, "--train-data-dir", str(tmp_path / "data"), "--split", "test"
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "--skip-bad-images" in err
    assert main([*argv, "--skip-bad-images"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["nll"]["num_images"] == 2, report["metrics"]["nll"]


def test_a_failed_report_write_keeps_the_old_report_and_leaves_no_partial_file(
    saved_pipeline, tmp_path, monkeypatch, capsys
):
    """The report goes through the project's one atomic text writer (core/saving.write_atomically): a
    full disk mid-write leaves the previous report whole and no hidden partial file (the partial was
    left behind)."""
    import errno
    import pathlib

    from hf_ddpm.cli import main

    report = tmp_path / "r.json"
    assert main(_nll_argv(saved_pipeline, tmp_path)) == 0
    before = report.read_text()
    write_text = pathlib.Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name.startswith(".r.json.") and self.name.endswith(".partial"):
            write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    capsys.readouterr()
    assert main(_nll_argv(saved_pipeline, tmp_path, "--seed", "1")) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert "No space left on device" in last and last.endswith(f"{str(report)!r}"), last
    assert report.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# ------------------------------------------------------------------------------------ a covariance head
# Gaussian images whose halves differ, (m, s) = (0.1, 0.25) and (-0.2, 0.05) (narrow enough that the 8-bit
# grid's clipping at -1 and 1 leaves no mass to speak of), under the exact eps-predictor with the exact
# NPR head (tests/gaussian_oracle.py, FeatureOracleUNet).
HEAD_DATA = {"means": (0.1, -0.2), "stds": (0.25, 0.05), "num_train_timesteps": 100}


def _npr_oracle_pipeline():
    from gaussian_oracle import FeatureOracleUNet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    unet = FeatureOracleUNet("npr", **HEAD_DATA)
    scheduler = HFDDPMScheduler(num_train_timesteps=100, variance_type="npr", clip_sample=False)
    return HFDDPMPipeline(unet=unet, scheduler=scheduler, covariance_head=unet.exact_head())


def _expected_npr_bound_bpd(unet, x0: torch.Tensor, chain: list[int]) -> torch.Tensor:
    """The bound per image (bits/dim) of the chain ``chain`` (timesteps, descending) for these images,
    in expectation over the x_t draws, from the closed forms of Gaussian data alone (float64).

    For N(m, s^2) data, x_t = a x_0 + b eps (a^2 = ab_t, b^2 = 1 - ab_t) gives E[x_0 | x_t] =
    m + k (x_t - a m), k = a s^2 / (ab_t s^2 + b^2), and V_t = Var[x_0 | x_t] = s^2 b^2 / (ab_t s^2 + b^2),
    so for a given x_0, E (x_0 - E[x_0 | x_t])^2 = (1 - k a)^2 (x_0 - m)^2 + k^2 b^2. A step t -> s of the
    posterior q(x_s | x_t, x_0) = N(. + c x_0, beta-tilde) (Ho et al. eq. 7, beta_{s|t} = 1 - ab_t / ab_s,
    c = sqrt(ab_s) beta_{s|t} / b^2) against the model's N(. + c E[x_0 | x_t], beta-tilde + c^2 V_t) (the
    optimal variance, which the exact NPR head gives) has KL = (log(sigma^2 / beta-tilde) +
    (beta-tilde + c^2 E (x_0 - E[x_0 | x_t])^2) / sigma^2 - 1) / 2. The decoder at the last timestep is
    the discretised N(E[x_0 | x_t], beta-tilde_1) (Ho et al. eq. 13, with the variance of the authors'
    bound: beta-tilde_1 = beta_1 (1 - ab_0) / (1 - ab_1) of the full chain), by Gauss-Hermite quadrature
    over eps; the prior is KL(N(a x_0, b^2) || N(0, 1)) at the first timestep."""
    ab_table = unet.alphas_cumprod
    m, s = unet.pixel_moments()
    x = x0.double()

    def moments(t):
        ab = ab_table[t]
        k = ab.sqrt() * s**2 / (ab * s**2 + 1 - ab)
        return ab, k, s**2 * (1 - ab) / (ab * s**2 + 1 - ab)

    ab = ab_table[chain[0]]
    nats = 0.5 * ((1 - ab) + ab * x**2 - 1 - torch.log(1 - ab))
    for t, t_next in zip(chain, chain[1:]):
        ab, k, variance = moments(t)
        ab_s = ab_table[t_next]
        beta = 1 - ab / ab_s
        c = ab_s.sqrt() * beta / (1 - ab)
        tilde = beta * (1 - ab_s) / (1 - ab)
        error2 = (1 - k * ab.sqrt()) ** 2 * (x - m) ** 2 + k**2 * (1 - ab)
        sigma2 = tilde + c**2 * variance
        nats = nats + 0.5 * (torch.log(sigma2 / tilde) + (tilde + c**2 * error2) / sigma2 - 1)
    ab, k, _ = moments(chain[-1])
    ab_0, ab_1 = ab_table[0], ab_table[1]
    variance = (1 - ab_1 / ab_0) * (1 - ab_0) / (1 - ab_1)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    decoder = torch.zeros_like(x)
    half_bin = 1 / 255
    for z, w in zip(nodes, weights / weights.sum(), strict=True):
        mean = m + k * (ab.sqrt() * x + (1 - ab).sqrt() * z - ab.sqrt() * m)
        upper = torch.where(
            x > 0.999, 1.0, torch.special.ndtr((x + half_bin - mean) / variance.sqrt())
        )
        lower = torch.where(
            x < -0.999, 0.0, torch.special.ndtr((x - half_bin - mean) / variance.sqrt())
        )
        # clamped as Ho et al.'s decoder is, so that far-off quadrature nodes cost no infinities
        decoder = decoder - w * torch.log((upper - lower).clamp(min=1e-12))
    return (nats + decoder).flatten(1).mean(1) / np.log(2)


def _head_data(count: int) -> torch.Tensor:
    from gaussian_oracle import FeatureOracleUNet

    m, s = FeatureOracleUNet(**HEAD_DATA).pixel_moments()
    noise = torch.randn(
        (count, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    return (torch.round(((m + s * noise).clamp(-1, 1) + 1) / 2 * 255) / 255 * 2 - 1).float()


@pytest.mark.parametrize(
    "chain, options",
    [
        ("10 steps", {"num_inference_steps": 10}),
        ("all 100 terms", {}),
        ("importance-sampled", {"nll_timesteps": 30}),
    ],
)
def test_the_nll_of_a_model_with_a_covariance_head_reads_eps_and_the_head(chain, options):
    """Issue 20: evaluate's bound ran the UNet alone on a model whose variance type is NPR, and the
    scheduler refused its C channels. It is the bound of eps and the head from one UNet call per term,
    and it equals the closed-form bound of the exact NPR model of Gaussian data (about 2.9 bits/dim at 10
    steps; fixed_small's is tens of bits/dim)."""
    from hf_ddpm.evaluation.evaluate import ReferenceData, evaluate_pipeline

    pipe = _npr_oracle_pipeline()
    images = _head_data(192)
    report = evaluate_pipeline(
        pipe, ReferenceData(images, 256, "gaussian", "test"), metrics="nll", seed=3, **options
    )
    nll = report["metrics"]["nll"]
    steps = options.get("num_inference_steps")
    if steps is not None:
        pipe.scheduler.set_timesteps(steps)
        timesteps = [int(t) for t in pipe.scheduler.timesteps]
    else:
        timesteps = list(range(99, -1, -1))
    expected = _expected_npr_bound_bpd(pipe.unet, images, timesteps)
    # One UNet call per term: the head reads that call's features, it does not call the UNet again.
    # (the importance-sampled estimate adds each image's decoder term to its K draws)
    terms = nll["timesteps_per_image"] + ("nll_timesteps" in options)
    assert pipe.unet.rows == len(images) * terms
    difference = nll["bpd"] - expected.mean().item()
    assert abs(difference) < 4 * nll["bpd_stderr"], (chain, nll["bpd"], expected.mean().item())


@pytest.mark.parametrize(
    "extra", [[], ["--nll-timesteps", "3"], ["--num-inference-steps", "4"]], ids=str
)
def test_cli_nll_of_a_model_sampling_with_its_head(tmp_path, capsys, extra):
    """Issue 20: `hf-ddpm evaluate --metrics nll` (exact, importance-sampled, K-step) on a model whose
    scheduler samples with its NPR head exited 2 ("needs 2 output channels")."""
    import json

    from conftest import _tiny_unet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
    from hf_ddpm.cli import main
    from hf_ddpm.core.covariance_head import CovarianceHead

    unet = _tiny_unet(in_channels=1)
    head = CovarianceHead.for_unet(unet)
    with torch.no_grad():
        head.conv.bias.fill_(0.5)  # a second moment of 0.5 everywhere: not the zero start
    scheduler = HFDDPMScheduler(num_train_timesteps=20, variance_type="npr")
    HFDDPMPipeline(unet, scheduler, covariance_head=head).save_pretrained(tmp_path / "model")
    assert main(_nll_argv(tmp_path / "model", tmp_path, *extra)) == 0, capsys.readouterr().err
    nll = json.loads((tmp_path / "r.json").read_text())["metrics"]["nll"]
    assert np.isfinite(nll["bpd"]) and nll["bpd"] > 0
