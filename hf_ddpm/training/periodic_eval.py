"""``hf-ddpm train --eval-every N``: the metrics of ``hf-ddpm evaluate`` on the EMA model while training runs.

Every N steps the EMA weights are evaluated as ``hf-ddpm evaluate`` would (:func:`evaluate_pipeline`, on
every process of the run, each taking its share): ``--eval-metrics`` over ``--eval-images`` held-out images
(the ``test`` split of the training data) and ``--eval-samples`` samples. The figures go to the log and to
TensorBoard (``eval/<metric>``), and the last evaluation goes into the saved model card's ``model-index``,
as ``evaluate --push-to-hub`` writes it.

An evaluation that fails (no held-out split, DINOv2 not downloadable offline, ...) is one warning; training
goes on, without further evaluations.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hf_ddpm.sampling.sharding import ProcessGroup

if TYPE_CHECKING:
    from .setup import TrainingSetup

logger = logging.getLogger(__name__)

EVAL_SPLIT = "test"


class PeriodicEvaluation:
    """The run's evaluations: :meth:`due` says when, :meth:`run` evaluates and logs, and :attr:`last` is
    the last report, which the end of the run writes into the saved model card."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.last: dict[str, Any] | None = None
        self._stopped = False
        self._reference: Any = None
        self._extractors: Any = None

    def due(self, step: int) -> bool:
        every = self.setup.config.eval_every
        return bool(every) and step % every == 0 and not self._stopped

    def _evaluate(self) -> dict[str, Any]:
        from hf_ddpm.core.pipeline import HFDDPMPipeline
        from hf_ddpm.evaluation.evaluate import (
            EvaluationOptions,
            build_extractors,
            evaluate_pipeline,
            load_reference,
        )

        setup, config = self.setup, self.setup.config
        acc = setup.accelerator
        options = EvaluationOptions(
            metrics=config.eval_metrics,
            num_samples=config.eval_samples,
            num_inference_steps=config.eval_steps,
            batch_size=config.batch_size,
            seed=config.seed,
        )
        if self._reference is None:
            self._reference = load_reference(
                config.resolution,
                config.dataset,
                config.train_data_dir,
                EVAL_SPLIT,
                config.image_column,
                config.eval_images,
            )
            self._extractors = build_extractors(options.metrics, device=acc.device)
        setup.ema.copy_to(setup.ema_unet)
        setup.ema_unet.eval()
        null_label = setup.null_label if config.class_dropout > 0 else None
        pipeline = HFDDPMPipeline(
            unet=setup.ema_unet, scheduler=setup.scheduler, null_class_label=null_label
        )
        group = ProcessGroup(acc.process_index, acc.num_processes, acc.device)
        return evaluate_pipeline(pipeline, self._reference, options, self._extractors, group=group)

    def run(self, step: int) -> None:
        """Evaluate the EMA model at ``step``; a failure is one warning, and no evaluation follows."""
        from hf_ddpm.evaluation.evaluate import format_table

        setup = self.setup
        try:
            report = self._evaluate()
        except Exception as error:  # never the end of a training run
            self._stopped = True
            if not setup.accelerator.is_main_process:  # one warning per run, not per process
                return
            logger.warning(
                "evaluation at step %d failed, training goes on without --eval-every: %s: %s",
                step,
                type(error).__name__,
                error,
            )
            return
        report["step"] = step
        self.last = report
        figures = {
            f"eval/{name}": values["bpd"] if name == "nll" else values["value"]
            for name, values in report["metrics"].items()
        }
        if setup.accelerator.is_main_process:
            logger.info("evaluation at step %d:\n%s", step, format_table(report))
        if setup.config.logger != "none":
            setup.accelerator.log(figures, step=step)
