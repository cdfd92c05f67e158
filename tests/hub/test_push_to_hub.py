"""push_to_hub over real HTTP against the loopback Hub (tests/hub_server.py): upload, download, remote-code
load from the repo without hf_ddpm, and a network failure followed by a retry."""

import hashlib
import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_ddpm.core.pipeline import HFDDPMPipeline
from hf_ddpm.core.pushing import HubPushError, push_folder_to_hub
from hf_ddpm.core.scheduling import HFDDPMScheduler

T = 10
REPO = "tester/tiny-ddpm"


def _pipe(tiny_unet):
    pipe = HFDDPMPipeline(
        tiny_unet(out_channels=6), HFDDPMScheduler(num_train_timesteps=T, variance_type="learned")
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe):
    generator = torch.Generator().manual_seed(0)
    return pipe(batch_size=2, generator=generator, num_inference_steps=T, output_type="np").images


@pytest.fixture
def hub_down(hub_server, no_hub_retry_sleep):
    """Make every commit fail, without waiting out huggingface_hub's retries and back-off."""

    def fail(mode):
        hub_server.fail_next_commits(1000, mode)

    return fail


def _digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_push_download_and_remote_code_load(tiny_unet, tmp_path, hub_server, run_without_hf_ddpm):
    pipe = _pipe(tiny_unet)
    expected = _sample(pipe)
    local = tmp_path / "local"
    pipe.save_pretrained(local)

    url = pipe.push_to_hub(REPO, commit_message="first upload")
    sha = hub_server.repos[REPO].head
    assert url.endswith(f"/{REPO}/commit/{sha}")
    remote = hub_server.files(REPO)
    local_files = _digests(local)
    # Everything save_pretrained writes is uploaded unchanged, except the card, which names the repo.
    assert set(remote) == set(local_files) | {".gitattributes"}
    for path, digest in local_files.items():
        if path != "README.md":
            assert hashlib.sha256(remote[path]).hexdigest() == digest, path
    card = remote["README.md"].decode()
    assert f'DiffusionPipeline.from_pretrained("{REPO}", trust_remote_code=True)' in card

    downloaded = HFDDPMPipeline.from_pretrained(REPO)
    assert type(downloaded.scheduler) is HFDDPMScheduler
    downloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_sample(downloaded), expected)

    run_without_hf_ddpm(
        textwrap.dedent(f"""
        import sys
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads(1)
        pipe = DiffusionPipeline.from_pretrained({REPO!r}, trust_remote_code=True)
        assert type(pipe).__name__ == "HFDDPMPipeline" and type(pipe.scheduler).__name__ == "HFDDPMScheduler"
        assert not any(m.split(".")[0] == "hf_ddpm" for m in sys.modules)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps={T},
                      output_type="np").images
        np.save({str(tmp_path / "remote.npy")!r}, images)
        pipe.push_to_hub("tester/pushed-from-remote-code")
        """),
        env=hub_server.env,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)
    # The remote-code copy of the class pushes the same loadable layout.
    assert set(hub_server.files("tester/pushed-from-remote-code")) == set(remote)
    again = HFDDPMPipeline.from_pretrained("tester/pushed-from-remote-code")
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_sample(again), expected)


def test_second_push_makes_a_new_commit(tiny_unet, hub_server):
    pipe = _pipe(tiny_unet)
    pipe.push_to_hub(REPO)
    first = hub_server.repos[REPO].head
    pipe.unet.conv_out.bias.data += 1.0
    pipe.push_to_hub(REPO)
    assert hub_server.repos[REPO].head != first
    assert len(hub_server.repos[REPO].snapshots) == 3  # the repo's initial commit, then two pushes


def test_save_pretrained_with_push_to_hub(tiny_unet, tmp_path, hub_server):
    _pipe(tiny_unet).save_pretrained(
        tmp_path / "out", push_to_hub=True, repo_id=REPO, datasets=["ylecun/mnist"]
    )
    assert (tmp_path / "out" / "model_index.json").is_file()
    assert "ylecun/mnist" in hub_server.files(REPO)["README.md"].decode()


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_network_error_keeps_the_folder_and_a_retry_succeeds(
    tiny_unet, tmp_path, hub_server, hub_down, mode
):
    folder = tmp_path / "trained"
    _pipe(tiny_unet).save_pretrained(folder)
    hub_down(mode)
    before = _digests(folder)
    with pytest.raises(HubPushError) as failure:
        push_folder_to_hub(folder, REPO)
    message = str(failure.value)
    assert "Nothing local was lost" in message and str(folder) in message
    assert f"hf upload {REPO} {folder} ." in message and "hf_ddpm" not in message
    # The card gets the repo id before the upload; nothing else in the folder changes.
    after = _digests(folder)
    assert {k: v for k, v in after.items() if k != "README.md"} == {
        k: v for k, v in before.items() if k != "README.md"
    }
    assert REPO not in hub_server.repos or "model_index.json" not in hub_server.files(REPO)

    hub_server.fail_next_commits(0)
    push_folder_to_hub(folder, REPO)
    remote = hub_server.files(REPO)
    assert json.loads(remote["model_index.json"]) == json.loads(
        (folder / "model_index.json").read_text()
    )


def _retry_hint(error):
    """The command a failed push tells its user to run, with ``hf`` from this environment."""
    command = shlex.split(str(error).splitlines()[-1])
    assert command[:2] == ["hf", "upload"]
    return [str(Path(sys.executable).with_name("hf")), *command[1:]]


def test_the_retry_hint_is_a_command_a_diffusers_user_can_run(
    tiny_unet, tmp_path, hub_server, hub_down
):
    """The hint names only huggingface_hub's CLI (what a user of a saved folder has) and uploads what
    the failed push would have: the ignored files stay local."""
    folder = tmp_path / "trained"
    _pipe(tiny_unet).save_pretrained(folder)
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "state.bin").write_bytes(b"optimizer state")
    hub_down("500")
    with pytest.raises(HubPushError) as failure:
        push_folder_to_hub(folder, REPO, ignore_patterns=["checkpoint-*"])
    hub_server.fail_next_commits(0)
    subprocess.run(_retry_hint(failure.value), env=hub_server.env, check=True, capture_output=True)
    remote = hub_server.files(REPO)
    assert remote["model_index.json"] == (folder / "model_index.json").read_bytes()
    assert "unet/diffusion_pytorch_model.safetensors" in remote
    assert not [name for name in remote if name.startswith("checkpoint-")]


def test_failed_push_from_memory_keeps_its_temporary_folder(tiny_unet, hub_server, hub_down):
    pipe = _pipe(tiny_unet)
    hub_down("500")
    with pytest.raises(HubPushError, match="Nothing local was lost") as failure:
        pipe.push_to_hub(REPO)
    kept = failure.value.folder
    assert str(kept) in str(failure.value) and (kept / "model_index.json").is_file()
    hub_server.fail_next_commits(0)
    push_folder_to_hub(kept, REPO)
    assert "unet/diffusion_pytorch_model.safetensors" in hub_server.files(REPO)


def test_push_folder_needs_a_saved_pipeline(tmp_path, hub_server):
    with pytest.raises(FileNotFoundError, match="No model_index.json in"):
        push_folder_to_hub(tmp_path, REPO)


def test_push_of_a_loaded_training_folder_keeps_its_card_samples_and_config(
    tiny_unet, tmp_path, hub_server
):
    """Issue 14 item 10: HFDDPMPipeline.from_pretrained("out/run").push_to_hub(...) used to upload a
    generic card and no samples.png or train_config.json (so the Space fell back to 256 levels)."""
    import PIL.Image

    run = tmp_path / "out" / "run"
    _pipe(tiny_unet).save_pretrained(
        run,
        description="Trained for 3 steps by hf-ddpm train.",
        sample_grid=PIL.Image.new("RGB", (16, 16), (0, 0, 255)),
    )
    (run / "train_config.json").write_text('{"num_bins": 17}')
    (run / "checkpoint-3").mkdir()
    (run / "checkpoint-3" / "optimizer.bin").write_bytes(b"state")

    HFDDPMPipeline.from_pretrained(run).push_to_hub(REPO)
    remote = hub_server.files(REPO)
    card = remote["README.md"].decode()
    assert "Trained for 3 steps by hf-ddpm train." in card and "![samples](samples.png)" in card
    assert f'HFDDPMPipeline.from_pretrained("{REPO}")' in card and "\n# tiny-ddpm\n" in card
    assert str(run) not in card
    assert remote["samples.png"] == (run / "samples.png").read_bytes()
    assert remote["train_config.json"] == b'{"num_bins": 17}'
    assert not any(path.startswith("checkpoint-") for path in remote)
    # the local folder is untouched by the push
    assert 'from_pretrained("' + run.as_posix() + '"' in (run / "README.md").read_text()

    # and from the Hub on to another repo: the card and files come along through the Hub cache
    HFDDPMPipeline.from_pretrained(REPO).push_to_hub("tester/copy")
    copied = hub_server.files("tester/copy")
    assert copied["train_config.json"] == b'{"num_bins": 17}' and "samples.png" in copied
    copy_card = copied["README.md"].decode()
    assert "Trained for 3 steps" in copy_card and 'from_pretrained("tester/copy")' in copy_card
    assert f'"{REPO}"' not in copy_card
