"""What a run tells its readers while it trains: events, ETA and status (see transfer.training.run)."""

from __future__ import annotations

import time

from transfer.core.runs import FINISHED, RunDir

STEP_EVENT_SECONDS = 0.5  # at most about two step events a second: enough for a live chart


class Reporter:
    """Writes nothing when ``writes`` is False: in distributed training only rank 0 reports."""

    def __init__(self, run: RunDir, epochs: int, *, writes: bool = True):
        self.run = run
        self.epochs = epochs
        self.writes = writes
        self.started = time.perf_counter()
        self.last_event = 0.0
        self.epoch_seconds: list[float] = []  # kept in the checkpoint: the ETA survives a resume

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step_due(self) -> bool:
        return time.perf_counter() - self.last_event >= STEP_EVENT_SECONDS

    def eta_after(self, epoch: int) -> float:
        recent = self.epoch_seconds[-3:] or [0.0]
        return (self.epochs - epoch) * sum(recent) / len(recent)

    def info(self, message: str, **fields) -> None:
        self._event({"type": "info", "message": message, **fields})

    def warn(self, message: str, **fields) -> None:
        self._event({"type": "warning", "message": message, **fields})

    def status(self, **fields) -> None:
        if self.writes:
            self.run.update_status(**fields)

    def _event(self, event: dict) -> None:
        if self.writes:
            self.run.append_event(event)

    def progress(self, phase: str, done: int, total: int, seconds: float) -> None:
        """Work before the first epoch (features, decoding, the probe), at most every half second."""
        now = time.perf_counter()
        if 0 < done < total and now - self.last_event < STEP_EVENT_SECONDS:
            return
        self.last_event = now
        rate = done / seconds if seconds > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        self._event({"type": "progress", "phase": phase, "done": done, "total": total,
                               "images_per_s": round(rate, 1), "elapsed": round(self.elapsed(), 3),
                               "eta": None if eta is None else round(eta, 1)})

    def step(self, epoch, step, steps, loss, accuracy, lr, images_per_s, cursor, n) -> None:
        self.last_event = time.perf_counter()
        per_image = 1.0 / max(images_per_s, 1e-9)
        recent = self.epoch_seconds[-3:]
        epoch_time = sum(recent) / len(recent) if recent else n * per_image
        eta = (n - cursor) * per_image + (self.epochs - epoch) * epoch_time
        self._event({
            "type": "step", "epoch": epoch, "epochs": self.epochs, "step": step, "steps": steps,
            "loss": round(loss, 6), "accuracy": round(accuracy, 6), "lr": lr,
            "images_per_s": round(images_per_s, 1), "elapsed": round(self.elapsed(), 3), "eta": round(eta, 1),
        })
        self.status(step=step, steps=steps, eta=round(eta, 1))

    def epoch(self, epoch: int, *, train_loss: float, train_accuracy: float, val_loss: float, val_accuracy: float,
              best, improved: bool, lr: float, images_per_s: float, seconds: float) -> None:
        self._event({
            "type": "epoch", "epoch": epoch, "epochs": self.epochs,
            "train_loss": train_loss, "train_accuracy": train_accuracy,
            "loss": train_loss, "accuracy": train_accuracy,
            "val_loss": val_loss, "val_accuracy": val_accuracy,
            "best_val_accuracy": best.accuracy, "best_epoch": best.epoch, "improved": improved,
            "lr": lr, "images_per_s": round(images_per_s, 1), "seconds": round(seconds, 3),
            "elapsed": round(self.elapsed(), 3), "eta": round(self.eta_after(epoch), 1),
        })

    def epoch_saved(self, epoch: int, val_accuracy: float, best) -> None:
        self.status(epoch=epoch, step=None, val_accuracy=val_accuracy,
                               best_val_accuracy=best.accuracy, best_epoch=best.epoch,
                               eta=round(self.eta_after(epoch), 1),
                               message=f"Epoch {epoch} of {self.epochs} done.")

    def finish(self, best, **outcome) -> None:
        if not self.writes:
            return
        status = self.run.status()
        message = "Finished."
        if outcome.get("val_total"):
            message = (f"Finished: {outcome['val_correct']} of {outcome['val_total']} validation pictures right"
                       + (f" (best epoch {best.epoch})." if (status.get("epochs") or self.epochs) > 1 else "."))
        elif best.epoch:
            message = f"Finished: best validation accuracy {best.accuracy:.3f} at epoch {best.epoch}."
        self.status(state=FINISHED, ended_at=time.time(), eta=0, step=None, message=message,
                               epochs=status.get("epochs", self.epochs), **outcome)
