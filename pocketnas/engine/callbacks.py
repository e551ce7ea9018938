"""A training loop's side jobs as small callbacks (as arcface_torch's and NASLib's loops keep them): the loop
trains; TensorBoard logging, checkpoints, the stop at a step, the end-of-epoch files and verification are each one
object that the loop calls after every step and every epoch, in the order given.

A callback sees the :class:`~pocketnas.engine.trainer.Trainer` (its ``cfg``, ``step``, ``epoch``, ``out_dir`` and
saving methods) and the run's ``history``; ``on_step`` returning :data:`STOP` ends the run after that step."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)

STOP = "stop"


class Callback:
    """Does nothing; subclasses override what they need."""

    def on_step(self, trainer: Any, losses: Dict[str, float], history: Dict[str, Any]) -> Optional[str]:
        return None

    def on_epoch_end(self, trainer: Any, epoch: int, means: Dict[str, float], history: Dict[str, Any]) -> None:
        pass


class TensorBoardLogger(Callback):
    """Every ``log_every`` steps (and each epoch's first): the losses and the learning rate."""

    def on_step(self, trainer, losses, history):
        if trainer.env.is_main and (trainer.step % trainer.cfg.log_every == 0 or trainer.batch_in_epoch == 1):
            for k, v in losses.items():
                trainer.tb.add_scalar(f"train/{k}", v, trainer.step)
            trainer.tb.add_scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], trainer.step)
        return None


class Checkpointer(Callback):
    """A checkpoint every ``save_every_steps`` steps; at ``stop_after_steps`` a checkpoint and ``model.pt``, then
    the run stops. At every epoch's end the checkpoint and ``model.pt`` (and, with ``save_every_epoch``, the epoch's
    backbone for a multi-step student)."""

    def on_step(self, trainer, losses, history):
        cfg = trainer.cfg
        if cfg.save_every_steps and trainer.step % cfg.save_every_steps == 0:
            trainer.save_checkpoint()
        if cfg.stop_after_steps and trainer.step >= cfg.stop_after_steps:
            trainer.save_checkpoint()
            trainer.save_backbone(os.path.join(trainer.out_dir, "model.pt"))  # for evaluation or release
            logger.info("stopping at step %d as asked (stop_after_steps)", trainer.step)
            history["stopped_at_step"] = trainer.step
            return STOP
        return None

    def on_epoch_end(self, trainer, epoch, means, history):
        trainer.save_checkpoint()
        trainer.save_backbone(os.path.join(trainer.out_dir, "model.pt"))
        if trainer.cfg.save_every_epoch:
            from .teachers import epoch_checkpoint

            trainer.save_backbone(epoch_checkpoint(trainer.out_dir, epoch))


class Verifier(Callback):
    """Verification on ``val_bins`` every ``val_every_epochs`` epochs and after the last; ``model.pt`` is written
    again with the threshold it found."""

    def on_epoch_end(self, trainer, epoch, means, history):
        cfg = trainer.cfg
        if cfg.val_bins and (epoch % cfg.val_every_epochs == 0 or epoch == cfg.epochs):
            history["verification"][epoch] = trainer.verify()
            if trainer.verification is not None:
                trainer.save_backbone(os.path.join(trainer.out_dir, "model.pt"))  # with its threshold


def default_callbacks() -> List[Callback]:
    """What ``pocketnas train`` runs after each step and epoch, in this order."""
    return [TensorBoardLogger(), Checkpointer(), Verifier()]
