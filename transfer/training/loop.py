"""The epoch loop, read top to bottom (in the manner of torchvision's reference trainer).

:meth:`Trainer.train` prepares (``build``), restores the last checkpoint (``store``), fits the
linear probe when fine-tuning starts, then runs :meth:`Trainer.epochs`: per epoch
:meth:`Trainer.train_one_epoch` (the learning rate set per step from the schedule, loss and
hits summed on the device, the batch halved on out-of-memory), :func:`evaluate`, the best epoch
kept, an ``epoch`` event, a checkpoint, the status. All three methods share this loop.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from transfer.training.config import TrainConfig
from transfer.training.ranks import current_ranks
from transfer.core.devices import DeviceError, is_out_of_memory, release_cached_memory, resolve_device
from transfer.models.methods import METHODS, get_method
from transfer.models.backbones import pretrained_classifier
from transfer.core.runs import Cancelled, RunDir
from transfer.training import TrainingError
from transfer.training.build import (LazyModel, build_task, check_initial_weights, linear_probe_head,
                                     load_training_data, model_builder, require_both_splits, wants_linear_probe)
from transfer.training.head_fit import (balanced_class_weights, cross_validate_all, fits_in_closed_form,
                                        fit_linear_head)
from transfer.training.reporter import Reporter
from transfer.training.schedule import lr_factor, make_optimizer, seed_everything, set_learning_rate
from transfer.training.steps import StepParts, checked_loss, train_step
from transfer.training.store import Best, Store
from transfer.training.tasks import FeatureTask


def evaluate(task, targets: torch.Tensor, batch_size: int) -> tuple[float, float, torch.Tensor]:
    """Validation loss, accuracy and class probabilities (on the CPU) of every validation picture."""
    logits = task.val_logits(batch_size).float().cpu()
    loss = float(F.cross_entropy(logits, targets))
    accuracy = float((logits.argmax(1) == targets).float().mean())
    return round(loss, 6), round(accuracy, 6), torch.softmax(logits, dim=1)


def evaluate_features(head, features: torch.Tensor, targets: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and probabilities of ``head`` on feature vectors (on the CPU)."""
    head.eval()
    with torch.inference_mode():
        logits = head(features.to(next(head.parameters()).device)).float().cpu()
    return (round(float(F.cross_entropy(logits, targets)), 6), round(float((logits.argmax(1) == targets).float().mean()), 6),
            torch.softmax(logits, dim=1))


class Trainer:
    """One run's training: its state (task, optimizer, best epoch) and the loop over it."""

    def __init__(self, run: RunDir, config: TrainConfig):
        self.run = run
        self.config = config
        self.method = get_method(config.method)
        self.ranks = current_ranks()  # fellow processes of distributed training, if any
        self.reporter = Reporter(run, config.epochs, writes=self.ranks.is_main)

    # ------------------------------------------------------------------ top level

    def train(self) -> None:
        self.prepare()
        start_epoch = self.restore_checkpoint() + 1
        if start_epoch == 1 and wants_linear_probe(self.config, self.task, self.model):
            linear_probe_head(self.config, self.data, self.setup, self.model, self.reporter,
                              self.run.cancel_requested, self.extract)
        threads = torch.get_num_threads()
        if isinstance(self.task, FeatureTask) and self.setup.kind == "cpu":
            # A head's steps take well under a millisecond on one core; spreading such tiny
            # operations over several threads costs more in synchronisation than it saves.
            torch.set_num_threads(1)
        try:
            if self.fits_head_in_closed_form():
                self.fit_head(start_epoch)
            else:
                self.epochs(start_epoch)
        except Cancelled:
            self.write_outputs()
            self.reporter.status(**self.validation_counts())  # of the kept weights, as a finished run's
            raise
        finally:
            torch.set_num_threads(threads)
        self.write_outputs(with_novelty=True)
        self.reporter.finish(self.best, **self.validation_counts())

    def should_stop(self) -> bool:
        """Whether to cancel; with several ranks, all decide together."""
        return self.ranks.agree(self.run.cancel_requested())

    def prepare(self) -> None:
        """Data, model, what trains on what, optimizer: everything before the first epoch."""
        config = self.config
        self.generator = seed_everything(config.seed)
        self.setup = resolve_device(config.device, config.precision)
        processes = {"world_size": self.ranks.size} if self.ranks.size > 1 else {}
        self.reporter.info(f"Training on {self.setup.describe()}{self.ranks.describe()}.",
                           device=str(self.setup.device), **processes)
        self.prepare_data()
        self.batch_size = config.batch_size
        self.reporter.status(epochs=config.epochs, epoch=self.store.finished_epoch_on_disk(),
                             message="Preparing the data.", batch_size=self.batch_size, **processes)
        self.model = LazyModel(model_builder(config, len(self.data.classes), self.initial_weights),
                               self.store.write_model_info, background=self.method.caches_features)
        self.task = build_task(config, self.data, self.setup, self.model, self.reporter, self.run.cancel_requested,
                               caches_features=self.method.caches_features, extract=self.extract,
                               image_task_class=self.ranks.image_task_class())
        if self.task.sharded and self.batch_size < self.ranks.size:
            raise TrainingError(f"The batch size ({self.batch_size}) is the batch of all {self.ranks.size} "
                                f"processes together and must be at least that many; raise --batch-size.")
        self.optimizer = make_optimizer(config, self.task.trainable_groups(config.lr))
        self.scaler = self.setup.grad_scaler() if self.task.uses_amp else torch.amp.GradScaler("cpu", enabled=False)
        train_targets = self.data.train_targets.to(self.setup.device)
        # Every class weighs the same in the loss, however many pictures it has (all ones when even).
        class_weights = balanced_class_weights(self.data.train_targets, len(self.data.classes))
        self.parts = StepParts(self.task, self.optimizer, self.scaler, train_targets, self.generator,
                               config.label_smoothing, class_weights.to(self.setup.device))
        self.best = Best()
        self.samples_done = 0
        self.cross_validation = None

    def extract(self, *args, **kwargs):
        """Backbone features of pictures (:func:`transfer.models.features.extract_features`), shared
        out between the ranks when there are several."""
        from transfer.models.features import extract_features

        return self.ranks.sharded_extraction(extract_features)(*args, **kwargs)

    def prepare_data(self) -> None:
        self.data = load_training_data(self.config)
        self.store = Store(self.run, self.config, self.data, writes=self.ranks.is_main)
        self.store.write_labels()
        # The model card of an exported bundle reports the training data from this event.
        self.reporter.info(f"Data: {len(self.data.dataset.samples)} pictures in {len(self.data.classes)} classes.",
                           data_counts=self.data.dataset.counts())
        require_both_splits(self.data)
        self.initial_weights = check_initial_weights(self.config, self.run.path.parent, len(self.data.classes),
                                                     self.reporter)

    # ------------------------------------------------------------------ the head in closed form

    def fits_head_in_closed_form(self) -> bool:
        """Feature transfer with a plain linear head: a convex problem, solved rather than trained."""
        return isinstance(self.task, FeatureTask) and fits_in_closed_form(self.task.module)

    def fit_head(self, start_epoch: int) -> None:
        """The head fit to its optimum (:mod:`transfer.training.head_fit`), recorded as the run's
        one and only epoch so that every reader of epochs, checkpoints and status works as before."""
        if start_epoch > 1:
            return  # fitted before an interruption: the checkpoint holds it
        if self.should_stop():
            raise Cancelled()
        self.reporter.epochs = 1
        self.reporter.status(epochs=1, message="Fitting the head.")
        task, targets, config = self.task, self.data.train_targets, self.config
        begun = time.perf_counter()
        centre = task.train_features[:, 0].cpu()
        source = self.source_classifier()
        fit = fit_linear_head(centre, targets, len(self.data.classes), seed=config.seed, source=source)
        if task.views > 1:  # augmented views add rows; C was chosen on whole pictures, so no view leaks across folds
            search, views = fit.strength_search, task.views
            fit = fit_linear_head(task.train_features.cpu().reshape(-1, centre.shape[1]),
                                  targets.repeat_interleave(views), len(self.data.classes), strength=fit.strength,
                                  source=source)
            fit.strength_search = search
        fit.load_into(task.module)
        train_loss, train_accuracy, _ = evaluate_features(task.module, centre, targets)
        val_loss, val_accuracy, probabilities = evaluate(task, self.data.val_targets, self.batch_size)
        self.cross_validation = cross_validate_all(torch.cat([centre, task.val_features.cpu()]),
                                                   torch.cat([targets, self.data.val_targets]),
                                                   len(self.data.classes), fit.strength, seed=config.seed,
                                                   source=source)
        seconds = time.perf_counter() - begun
        self.reporter.epoch_seconds.append(seconds)
        self.report_fit(fit, seconds)
        improved = self.update_best(1, val_loss, val_accuracy, probabilities)
        self.reporter.epoch(1, train_loss=train_loss, train_accuracy=train_accuracy, val_loss=val_loss,
                            val_accuracy=val_accuracy, best=self.best, improved=improved, lr=0.0,
                            images_per_s=len(centre) * task.views / max(seconds, 1e-9), seconds=seconds)
        self.save_checkpoint(1)
        self.reporter.epoch_saved(1, val_accuracy, self.best)

    def source_classifier(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The backbone's own (ImageNet) classifier, which guides the head fit; None when the
        backbone's weights came from a file (its classifier would belong to other weights)."""
        if self.config.initial_weights is not None:
            return None
        return pretrained_classifier(self.config.backbone)

    def report_fit(self, fit, seconds: float) -> None:
        described = fit.describe()
        chosen = (f"C = {fit.strength:g} chosen by {fit.strength_search.folds}-fold cross-validation"
                  if fit.strength_search else f"C = {fit.strength:g} (the default when a class has one picture)")
        fields = {"head_fit": described}
        guided = (f", guided by the backbone's own {fit.source_classes:,} ImageNet classes" if fit.source_classes
                  else "")
        message = (f"Head fit to its optimum in {fit.iterations} L-BFGS iterations ({seconds:.2f} s): features "
                   f"scaled to unit length{guided}, classes weighted equally, {chosen}.")
        cv = self.cross_validation
        if cv is not None:
            fields.update(cv_accuracy=round(cv.accuracy, 6), cv_correct=cv.correct, cv_total=cv.total,
                          cv_folds=cv.folds)
            message += (f" Cross-validated over all {cv.total} labelled pictures ({cv.folds} folds): "
                        f"{cv.correct} right, accuracy {cv.accuracy:.3f}.")
            self.reporter.status(**{k: v for k, v in fields.items() if k.startswith("cv_")})
        if self.config.epochs != METHODS["features"].defaults["epochs"]:
            message += " The number of epochs does not apply to a head fit in closed form."
        self.reporter.info(message, **fields)

    def validation_counts(self) -> dict:
        """Validation pictures right and counted, for the epoch the kept weights come from."""
        if self.best.probabilities is None:
            return {}
        predicted = self.best.probabilities.argmax(1)
        return {"val_correct": int((predicted == self.data.val_targets).sum()),
                "val_total": int(len(self.data.val_targets))}

    # ------------------------------------------------------------------ epochs

    def epochs(self, start_epoch: int) -> None:
        config = self.config
        if start_epoch > config.epochs:
            return
        if start_epoch > 1:
            self.reporter.info(f"Resuming after epoch {start_epoch - 1}.", start_epoch=start_epoch)
        self.reporter.status(message=f"Epoch {start_epoch} of {config.epochs}.")
        for epoch in range(start_epoch, config.epochs + 1):
            begun = time.perf_counter()
            train_loss, train_accuracy, images_per_s = self.train_one_epoch(epoch)
            val_loss, val_accuracy, probabilities = evaluate(self.task, self.data.val_targets, self.batch_size)
            seconds = time.perf_counter() - begun
            self.reporter.epoch_seconds.append(seconds)
            improved = self.update_best(epoch, val_loss, val_accuracy, probabilities)
            stop_early = self.best.patience_spent(val_loss, config.early_stopping_patience)
            # Event, then checkpoint, then status: a kill in between repeats the epoch on resume
            # but never loses a finished one.
            self.reporter.epoch(epoch, train_loss=train_loss, train_accuracy=train_accuracy, val_loss=val_loss,
                                val_accuracy=val_accuracy, best=self.best, improved=improved,
                                lr=self.optimizer.param_groups[0]["lr"], images_per_s=images_per_s, seconds=seconds)
            self.save_checkpoint(epoch)
            self.reporter.epoch_saved(epoch, val_accuracy, self.best)
            if stop_early:
                self.reporter.info(f"Stopped early after epoch {epoch}: the validation loss has not improved for "
                                   f"{config.early_stopping_patience} epochs.", stopped_epoch=epoch)
                break

    def train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One pass over the training pictures in a seeded order; returns the mean loss, the
        accuracy and the pictures per second."""
        config = self.config
        self.task.train_mode(epoch)
        n = len(self.data.train_samples)
        order = self.task.epoch_order(epoch) if self.task.sharded else torch.randperm(n, generator=self.generator)
        # Loss and hits add up on the device; reading them forces a GPU sync, so that happens
        # only when an event is written.
        total_loss = torch.zeros((), device=self.setup.device)
        correct = torch.zeros((), dtype=torch.long, device=self.setup.device)
        seen, cursor, step = 0, 0, 0
        begun = time.perf_counter()
        while cursor < n:
            if self.should_stop():
                raise Cancelled()
            indices = order[cursor : cursor + self.batch_size]
            progress = self.samples_done / (config.epochs * n)
            lr = set_learning_rate(self.optimizer, lr_factor(config.schedule, progress, config.warmup_fraction))
            try:
                loss, hits = self.step(indices, epoch)
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(error):
                    raise
                loss = None
            if loss is None:
                # Out of memory: recovered here, after the except block, once the traceback that
                # holds the failed step's tensors is gone and their memory can really be freed.
                self.shrink_batch()
                continue
            cursor += len(indices)
            seen += len(indices)
            self.samples_done += len(indices)
            step += 1
            total_loss += loss * len(indices)
            correct += hits
            if cursor >= n or self.reporter.step_due():
                mean_loss = checked_loss(float(total_loss) / seen)
                steps = step + math.ceil((n - cursor) / self.batch_size)
                self.reporter.step(epoch, step, steps, mean_loss, int(correct) / seen, lr,
                                   seen / (time.perf_counter() - begun), cursor, n)
        return float(total_loss) / seen, int(correct) / seen, seen / max(1e-9, time.perf_counter() - begun)

    def step(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the global batch ``indices``; a sharded task trains on this
        rank's share and the batch's loss and hits are summed over the ranks."""
        if not self.task.sharded:
            return train_step(self.parts, indices, epoch)
        local, weight = self.task.shard(indices)
        loss, hits = train_step(self.parts, local, epoch, weight)
        return self.task.batch_totals(loss, hits, len(local), weight, len(indices))

    def shrink_batch(self) -> None:
        if self.ranks.size > 1:
            # Halving on one rank alone would leave the others waiting in the gradient exchange.
            raise DeviceError(f"The device ran out of memory with a batch of {self.batch_size} over "
                              f"{self.ranks.size} processes; start again with a smaller --batch-size or image size.")
        self.optimizer.zero_grad(set_to_none=True)
        release_cached_memory(self.setup)
        if self.batch_size == 1:
            raise DeviceError("The device ran out of memory even with one picture per batch; choose a smaller "
                              "image size or backbone, or train on the CPU (--device cpu).")
        self.batch_size = max(1, self.batch_size // 2)
        self.reporter.warn(f"Out of memory: batch size halved to {self.batch_size}, retrying.",
                           batch_size=self.batch_size)
        self.reporter.status(batch_size=self.batch_size)

    def update_best(self, epoch: int, val_loss: float, val_accuracy: float, probabilities: torch.Tensor) -> bool:
        best = self.best
        if not best.is_beaten_by(val_accuracy, val_loss):
            return False
        best.accuracy, best.loss, best.epoch, best.probabilities = val_accuracy, val_loss, epoch, probabilities
        state = {k: v.detach().cpu().clone() for k, v in self.task.module.state_dict().items()}
        if isinstance(self.task, FeatureTask):
            best.state = state  # tiny: kept in memory and in the checkpoint, written at the end
        else:
            self.store.write_weights(state)
        return True

    # ------------------------------------------------------------------ checkpoints and outputs

    def save_checkpoint(self, epoch: int) -> None:
        self.store.save_checkpoint({
            "epoch": epoch,
            "module": self.task.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "samples_done": self.samples_done,
            "batch_size": self.batch_size,
            **self.best.to_checkpoint(),
            "epoch_seconds": list(self.reporter.epoch_seconds),
        })

    def restore_checkpoint(self) -> int:
        """Load the last finished epoch if there is one; returns its number (0 if none)."""
        checkpoint = self.ranks.from_main(lambda: self.store.load_checkpoint(self.reporter.warn))
        if checkpoint is None:
            return 0
        self.task.module.load_state_dict(checkpoint["module"])
        self.task.train_mode(checkpoint["epoch"] + 1)  # so the optimizer's groups match the epoch
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.samples_done = int(checkpoint["samples_done"])
        self.batch_size = int(checkpoint["batch_size"])
        self.best = Best.from_checkpoint(checkpoint)
        self.reporter.epoch_seconds = list(checkpoint.get("epoch_seconds") or [])
        return int(checkpoint["epoch"])

    def write_outputs(self, with_novelty: bool = False) -> None:
        """Best weights (feature transfer), the novelty reference (a finished run, not a
        cancelled one), validation predictions and metrics, and a result event."""
        best = self.best
        if best.probabilities is None:
            return
        if isinstance(self.task, FeatureTask) and best.state is not None:
            self.model.head().load_state_dict(best.state)
            self.store.write_weights(self.model.get().state_dict())
        val_novelty = self.store.write_novelty(self.task, self.batch_size) if with_novelty else None
        self.store.write_outputs(best, val_novelty)
