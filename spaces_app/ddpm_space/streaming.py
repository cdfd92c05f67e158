"""Run a pipeline in a worker thread and stream what its step callback sees.

Gradio streams a generator's yields to the page; a pipeline reports its steps through
``callback_on_step_end``. The worker puts the chosen steps' tensors on a queue that the request's
generator drains, and a viewer who leaves (the generator is closed) stops the worker at its next step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import torch

# Intermediate frames streamed per run.
STREAM_FRAMES = 10

# (step index, the tensors the callback asked for) -> what to stream, or None to skip the step.
FrameOf = Callable[[int, dict[str, torch.Tensor | None]], Any]


@dataclass(frozen=True)
class Finished:
    """The last item a stream yields: the pipeline's ``output_type="np"`` images."""

    images: np.ndarray


class _Cancelled(Exception):
    """Raised inside the pipeline's step callback to stop a run whose viewer has gone."""


def every_nth_step(total: int, frames: int = STREAM_FRAMES) -> Callable[[int], bool]:
    """Whether step ``i`` of ``total`` is streamed: about ``frames`` evenly spaced steps, and the last."""
    every = max(1, total // frames)
    return lambda step: step % every == 0 or step == total - 1


def stream_pipeline(
    pipe: Any,
    call_kwargs: dict[str, Any],
    frame_of: FrameOf | None,
    tensor_inputs: list[str] | None = None,
) -> Iterator[Any | Finished]:
    """Run ``pipe(**call_kwargs)`` in a worker thread; yield ``frame_of(step, tensors)`` for each step
    where it is not None, then ``Finished(images)``.

    ``tensor_inputs`` names the tensors the callback asks for (the pipeline's default where None).
    Without ``frame_of`` (a pipeline that cannot stream) only the images are yielded. The pipeline's
    own errors are re-raised here as a readable ``gr.Error``.
    """
    frames: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def on_step_end(
        pipe: Any, step: int, timestep: int, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if stop.is_set():
            raise _Cancelled
        frame = frame_of(step, tensors)
        if frame is not None:
            frames.put(frame)
        return tensors

    if frame_of is not None:
        call_kwargs = {**call_kwargs, "callback_on_step_end": on_step_end}
        if tensor_inputs is not None:
            call_kwargs["callback_on_step_end_tensor_inputs"] = tensor_inputs

    def work() -> None:
        try:
            outcome["images"] = pipe(**call_kwargs).images
        except _Cancelled:
            pass
        except Exception as err:  # re-raised in the request's thread
            outcome["error"] = err
        finally:
            frames.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (frame := frames.get()) is not None:
            yield frame
    finally:
        stop.set()
    worker.join()
    if "error" in outcome:
        error = outcome["error"]
        raise gr.Error(f"Sampling failed: {error}", print_exception=False) from error
    yield Finished(np.asarray(outcome["images"]))
