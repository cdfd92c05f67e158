"""The Space under load (issue 21, item 4): 8 concurrent Generate and 4 concurrent Edit requests against one
Space process, ``python spaces_app/app.py`` as a Space runs it, on 127.0.0.1.

The server is a subprocess, so that its peak memory (the kernel's VmHWM) is its own, with the per-request
caps set low through the Space's variables (``HF_DDPM_MAX_STEPS=10``, ``HF_DDPM_MAX_IMAGES=4``) and a
queue of ``HF_DDPM_MAX_QUEUE=4``, on a tiny 8x8 model. Each request has its own seed and its own
``gradio_client.Client`` (its own session, as 12 users have), and is run once alone first: under load
each either completes with exactly the images it gets alone (so none sees another's) or gets Gradio's
"Queue is full" message.

To see the queue fill without timing luck, the server runs with a stand-in for ZeroGPU's ``spaces``
package on its path (``@spaces.GPU`` is applied where it exists, app.py): its decorator holds one call,
when the test asks, until the test releases it, as ZeroGPU holds a request until a GPU is attached.
While the model's one worker is held, exactly ``HF_DDPM_MAX_QUEUE`` of the other 11 requests join the
queue and the rest are refused. A ``sitecustomize`` beside it refuses and reports any connection to an
address other than loopback.

Memory: every model request runs one at a time (``concurrency_limit=1`` on the shared "model" id), so
load adds only what waiting requests hold (their inputs and the frames streamed to their sessions: at
the caps, 4 images of 8x8 grey over 10 steps, a few kB), never a second model activation. So the peak
under load must stay within ``PER_WAITING_REQUEST`` per queue place of the peak of the same requests run
one by one, and under ``PEAK_CAP`` in all. Measured (2026-12-06, 2 shared cores, load average ~2-3, one
CPU thread): start-up 616 MiB, peak with one request at a time 670 MiB, peak under this load 676 MiB
(+6 MiB, against an allowance of 4 x 16 MiB). The test takes ~45 s, 9 of them the server's start-up.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pytest
from conftest import _tiny_unet
from gradio_client import Client, handle_file
from gradio_client.utils import QueueError
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "spaces_app" / "app.py"
SIZE = 8
MAX_STEPS, MAX_IMAGES, MAX_QUEUE = 10, 4, 4
GENERATES, EDITS = 8, 4
# What one waiting request may add to the peak of the requests run alone (see the module docstring):
# generous for a few kB of inputs and frames, far below a model run or a leak of Gradio's per-event data.
PER_WAITING_REQUEST = 16 * 2**20
# The most the process may ever hold: about twice the measured peak.
PEAK_CAP = 1536 * 2**20
# Every wait is bounded: the server's start-up (torch, diffusers, gradio imports) and each request.
START_TIMEOUT_S, REQUEST_TIMEOUT_S = 120, 60

STAND_IN_SPACES = '''"""ZeroGPU's `spaces` package, as test_space_load needs it: GPU holds the call that finds the file
named by HF_DDPM_TEST_HOLD (deleting it) until a line arrives on stdin."""
import functools
import inspect
import os
import sys
from pathlib import Path


def _hold():
    ask = Path(os.environ["HF_DDPM_TEST_HOLD"])
    if ask.exists():
        ask.unlink()
        print("held", flush=True)
        sys.stdin.readline()


def GPU(fn):
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def held(*args, **kwargs):
            _hold()
            yield from fn(*args, **kwargs)

    else:

        @functools.wraps(fn)
        def held(*args, **kwargs):
            _hold()
            return fn(*args, **kwargs)

    return held
'''

LOOPBACK_ONLY = '''"""Refuse (and report on stderr) any connection of this process to an address other than loopback."""
import ipaddress
import sys


def _loopback(host):
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.bind"):
        address = args[1]
    elif event == "socket.getaddrinfo":
        address = args[:2]
    else:
        return
    if isinstance(address, tuple) and address and isinstance(address[0], str | bytes | None):
        host = address[0].decode() if isinstance(address[0], bytes) else address[0]
        if not _loopback(host):
            print(f"NON-LOOPBACK {event} {address!r}", file=sys.stderr, flush=True)
            raise OSError(f"test_space_load: {event} to {address!r} refused: loopback only")


sys.addaudithook(_guard)
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SpaceProcess:
    """``python spaces_app/app.py --model MODEL --port PORT`` with the caps, the stand-in ``spaces`` and
    the loopback guard; its stdout lines arrive on :attr:`lines`."""

    def __init__(self, model: Path, tmp: Path) -> None:
        site = tmp / "site"
        site.mkdir()
        (site / "spaces.py").write_text(STAND_IN_SPACES)
        (site / "sitecustomize.py").write_text(LOOPBACK_ONLY)
        self.hold_file = tmp / "hold"
        env = {
            **os.environ,
            "PYTHONPATH": f"{site}:{ROOT}",
            "HF_DDPM_MAX_STEPS": str(MAX_STEPS),
            "HF_DDPM_MAX_IMAGES": str(MAX_IMAGES),
            "HF_DDPM_MAX_QUEUE": str(MAX_QUEUE),
            "HF_DDPM_TEST_HOLD": str(self.hold_file),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        }
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(APP), "--model", str(model), "--port", str(port)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(
            target=self._read, args=(self.process.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(target=self._collect, daemon=True).start()

    @staticmethod
    def _read(stream, lines: queue.Queue[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # the process ended

    def _collect(self) -> None:
        for line in self.process.stderr:
            self.errors.append(line)

    def wait_for(self, pattern: str) -> str:
        """The first stdout line matching ``pattern``; fails if the process ends or is silent too long."""
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"the Space printed no {pattern!r} in {START_TIMEOUT_S} s")
            if not line:
                pytest.fail(f"the Space ended ({self.process.wait()}):\n{''.join(self.errors)}")
            if re.search(pattern, line):
                return line

    def peak_bytes(self) -> int:
        """The process's peak resident memory so far (the kernel's high-water mark, VmHWM)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024

    def hold_next_call(self) -> None:
        self.hold_file.touch()

    def release(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("space_load")
    unet = _tiny_unet(in_channels=1, sample_size=SIZE)
    scheduler = HFDDPMScheduler(num_train_timesteps=20, beta_start=1e-3, beta_end=0.2)
    HFDDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp / "model")
    server = SpaceProcess(tmp / "model", tmp)
    try:
        server.wait_for(r"Running on local URL")
        yield server, _pictures(tmp)
    finally:
        server.stop()


def _pictures(tmp: Path) -> dict:
    """A picture to edit (a ramp with a bright square) with its lower half painted, as the ImageEditor
    sends it: background, painted layer (RGBA, opaque where painted) and composite."""
    pixels = np.tile(np.linspace(0, 255, SIZE), (SIZE, 1))
    pixels[2:5, 2:5] = 255
    Image.fromarray(pixels.round().astype(np.uint8)).save(tmp / "picture.png")
    layer = np.zeros((SIZE, SIZE, 4), np.uint8)
    layer[SIZE // 2 :] = (255, 0, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp / "layer.png")
    composite = np.asarray(Image.open(tmp / "picture.png").convert("RGBA")).copy()
    composite[SIZE // 2 :] = layer[SIZE // 2 :]
    Image.fromarray(composite, "RGBA").save(tmp / "composite.png")
    return {name: tmp / f"{name}.png" for name in ("picture", "layer", "composite")}


def _requests() -> list[tuple[str, int]]:
    """Each request as (endpoint, seed): distinct seeds, Generate first."""
    return [("generate", 100 + k) for k in range(GENERATES)] + [
        ("edit", 200 + k) for k in range(EDITS)
    ]


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _submit(url: str, endpoint: str, seed: int, pictures: dict):
    """Send one request from its own client (its own session); returns (client, job)."""
    client = Client(url, analytics_enabled=False, verbose=False)
    if endpoint == "generate":
        job = client.submit(
            seed=seed,
            num_images=MAX_IMAGES,
            steps=MAX_STEPS,
            variance_type="fixed_small",
            class_label=0,
            guidance_scale=1,
            api_name="/generate",
        )
    else:
        editor = {
            "background": handle_file(str(pictures["picture"])),
            "layers": [handle_file(str(pictures["layer"]))],
            "composite": handle_file(str(pictures["composite"])),
            "id": None,
        }
        job = client.submit(
            editor=editor,
            mode="Inpaint",
            strength=0.5,
            steps=MAX_STEPS // 2,
            jump_n_sample=2,  # 5 steps x 2 resamplings: the cap of 10 model calls
            seed=seed,
            class_label=-1,
            guidance_scale=1,
            api_name="/edit",
        )
    return client, job


def _outcome(client: Client, job) -> tuple | str:
    """What the request gave: its images and status line, or ``"queue full"`` for Gradio's message.
    Any other error fails the test."""
    try:
        result = job.result(timeout=REQUEST_TIMEOUT_S)
    except QueueError as error:
        assert "Queue is full" in str(error)
        return "queue full"
    finally:
        client.close()
    if len(result) == 4:  # generate: x_t, x_0, gallery, status
        *_, gallery, status = result
        return tuple(_pixels(item["image"]).tobytes() for item in gallery), status
    *_, picture, status = result  # edit: x_t, result, status
    return (_pixels(picture).tobytes(),), status


def _run_together(url: str, requests: list[tuple[str, int]], pictures: dict) -> list:
    """Every request sent at once, each from its own thread and client."""
    with ThreadPoolExecutor(len(requests)) as pool:
        jobs = list(pool.map(lambda r: _submit(url, *r, pictures), requests))
        return list(pool.map(lambda cj: _outcome(*cj), jobs))


def _run_together_until_queued(
    server: SpaceProcess, requests: list[tuple[str, int]], pictures: dict
) -> list:
    """Send every request at once while the model's worker is held; return their (client, job) once
    each has joined the queue or been refused. Refusals come only once the queue is full and nothing
    leaves it while the worker is held, so when ``len(requests) - MAX_QUEUE`` have come back refused,
    the rest have joined (a queue that took fewer leaves this wait at its timeout)."""
    with ThreadPoolExecutor(len(requests)) as pool:
        jobs = list(pool.map(lambda r: _submit(server.url, *r, pictures), requests))
    expected_refusals = len(requests) - MAX_QUEUE
    refusals = 0
    try:
        for future in as_completed([job.future for _, job in jobs], timeout=REQUEST_TIMEOUT_S):
            assert isinstance(future.exception(), QueueError), future.exception()
            refusals += 1
            if refusals == expected_refusals:
                break
    except TimeoutError:
        pytest.fail(
            f"{refusals} of {len(requests)} refused by a queue of {MAX_QUEUE}; expected {expected_refusals}"
        )
    return jobs


def test_concurrent_generates_and_edits_complete_or_are_queued_and_never_mix(space):
    server, pictures = space
    requests = _requests()
    started = server.peak_bytes()
    alone = [_outcome(*_submit(server.url, *request, pictures)) for request in requests]
    assert all(outcome != "queue full" for outcome in alone)
    images_alone = [images for images, _ in alone]
    # Distinct seeds give distinct images, so a request shown another's images would be seen.
    assert len(set(images_alone)) == len(requests)
    assert all(len(images) == MAX_IMAGES for images, _ in alone[:GENERATES])
    peak_alone = server.peak_bytes()

    # The model's worker held on the first request: the queue fills, and exactly MAX_QUEUE join it.
    server.hold_next_call()
    first_client, first_job = _submit(server.url, *requests[0], pictures)
    server.wait_for(r"^held$")
    others = _run_together_until_queued(server, requests[1:], pictures)
    server.release()
    outcomes = [_outcome(first_client, first_job)] + [_outcome(*job) for job in others]
    refused = [k for k, outcome in enumerate(outcomes) if outcome == "queue full"]
    assert len(refused) == len(requests) - 1 - MAX_QUEUE, outcomes
    for k, outcome in enumerate(outcomes):
        if k not in refused:
            assert outcome == alone[k], f"request {requests[k]} differs from the same request alone"

    # All twelve at once, nothing held: each completes as it does alone, or is refused by the queue.
    outcomes = _run_together(server.url, requests, pictures)
    # Whichever arrives first finds the queue empty (which one that is, the threads decide).
    assert any(outcome != "queue full" for outcome in outcomes), outcomes
    for request, outcome, expected in zip(requests, outcomes, alone, strict=True):
        assert outcome in ("queue full", expected), f"request {request} differs from it alone"

    peak_load = server.peak_bytes()
    print(
        f"Space peak memory: start-up {started / 2**20:.0f} MiB, alone {peak_alone / 2**20:.0f} MiB, "
        f"under load {peak_load / 2**20:.0f} MiB"
    )
    assert peak_load <= peak_alone + MAX_QUEUE * PER_WAITING_REQUEST, (peak_alone, peak_load)
    assert peak_load <= PEAK_CAP, peak_load
    assert not [line for line in server.errors if "NON-LOOPBACK" in line], server.errors
