"""Configure: choose the backbone, the transfer method and (if wanted) the training settings."""

from __future__ import annotations

import streamlit as st

from transfer.models.catalogue import METHODS, UNAVAILABLE, get_backbone
from transfer.training.config import AUGMENTATIONS, OPTIMIZERS, SCHEDULES, TrainConfig
from transfer.core.errors import TransferError
from transfer.runtime.estimate import (
    describe_seconds,
    estimate_training_seconds,
    recommend_method,
    request_measurement,
    stored_forward_seconds,
)
from transfer.core.runs import ACTIVE_STATES
from ui import jobs_view, lr_finder_view, reports, session, weights_view
from ui.gpus_view import gpus_to_use
from ui.sidebar import has_gpu

STATUS_BADGES = {
    "bundled": "bundled",
    "cached": "cached",
    "downloadable": "downloads once",
    "unavailable": "not available offline",
}

st.title("Configure the transfer")

choice = session.chosen_dataset()
if choice is None:
    st.info("Choose a data set first: the settings depend on how many pictures you have.")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/folder_open:")
    st.stop()
report = reports.chosen_report(choice)
if not report.ok or report.dataset is None:
    st.error("The chosen data set has problems to fix before training: " + " ".join(report.errors))
    st.page_link("pages/data.py", label="Go to Data", icon=":material/folder_open:")
    st.stop()
dataset = report.dataset
draft = session.draft_config()
st.caption(f"Data set **{choice['name']}**: {len(dataset.classes)} classes, "
           f"{len(dataset.train)} training and {len(dataset.val)} validation pictures.")

# ----------------------------------------------------------------------------- backbone
st.subheader("1. Backbone")
st.markdown("The pretrained network whose knowledge is transferred. Smaller ones train faster; "
            "higher ImageNet accuracy usually transfers better.")
search = st.text_input("Search more models (timm library)", placeholder="e.g. convnext, vit_small, resnet",
                       help="Adds timm's pretrained models whose name contains this text.")
rows = reports.catalogue_rows(search.strip())
table = [
    {
        "backbone": row["name"],
        "source": row["source"],
        "parameters (M)": round(row["params"] / 1e6, 1) if row["params"] else None,
        "speed": row["speed"],
        "ImageNet top-1 %": row["imagenet_top1"],
        "input size": row["preprocessing"]["input_size"],
        "weights": STATUS_BADGES.get(row["status"], row["status"]),
    }
    for row in rows
]
st.dataframe(table, hide_index=True, width="stretch", height=260)
own_weights = weights_view.wants_own_weights(draft)  # then no catalogue weights are needed
usable = [row["name"] for row in rows if row["status"] != UNAVAILABLE or own_weights]
unusable = [row["name"] for row in rows if row["status"] == UNAVAILABLE]
if unusable and not own_weights:
    st.caption(f"{len(unusable)} backbones are marked 'not available offline': this machine is offline and their weights "
               "are not cached yet, so they cannot be picked. Connect once to download them.")
current = draft.get("backbone") if draft.get("backbone") in usable else usable[0]
backbone = st.selectbox("Backbone", usable, index=usable.index(current), key="backbone")
entry = get_backbone(backbone)
st.caption(entry.description or f"{entry.source} model, {entry.license} licence.")

# ----------------------------------------------------------------------------- method
st.subheader("2. Transfer method")
recommendation = recommend_method(len(dataset.train), len(dataset.classes), has_gpu())
method_names = list(METHODS)
current_method = draft.get("method", recommendation.method)
method = st.radio(
    "Method",
    method_names,
    index=method_names.index(current_method) if current_method in method_names else 0,
    format_func=lambda name: METHODS[name].title,
    captions=[METHODS[name].summary for name in method_names],
    key="method",
)
st.info(f"Recommended here: **{METHODS[recommendation.method].title}**. {recommendation.reason}")
initial_weights = weights_view.initial_weights_section(backbone, method, len(dataset.classes), draft)
gpus = gpus_to_use(draft.get("nproc_per_node"), key="gpus")

# ----------------------------------------------------------------------------- settings
defaults = dict(METHODS[method].defaults)
if draft.get("method") == method:  # keep what the user set for this method before
    defaults.update({k: v for k, v in draft.items() if v is not None})


with st.expander("Advanced settings", expanded=False):
    st.caption("The defaults suit the method; change them only if you know why.")
    left, middle, right = st.columns(3)
    epochs = left.number_input("Epochs", 1, 500, int(defaults.get("epochs", 10)), key=f"epochs_{method}",
                               help="How many times training goes through all pictures.")
    batch_size = middle.number_input("Batch size", 1, 1024, int(defaults.get("batch_size", 32)), key=f"batch_{method}",
                                     help="Pictures per step; a CUDA out-of-memory error halves it automatically.")
    lr_key = f"lr_{method}"
    if lr_key not in st.session_state:
        st.session_state[lr_key] = float(defaults.get("lr", 1e-3))
    lr = right.number_input("Learning rate", 1e-6, 1.0, format="%.5f", key=lr_key,
                            help="How big each learning step is; the finder below suggests one.")
    optimizer = left.selectbox("Optimizer", OPTIMIZERS, OPTIMIZERS.index(defaults.get("optimizer", "adamw")),
                               key=f"optimizer_{method}")
    schedule = middle.selectbox("Learning-rate schedule", SCHEDULES, SCHEDULES.index(defaults.get("schedule", "onecycle")),
                                key=f"schedule_{method}", help="One-cycle and cosine both warm up, then decay.")
    augmentation = right.selectbox("Augmentation", AUGMENTATIONS, AUGMENTATIONS.index(defaults.get("augmentation", "light")),
                                   key=f"augmentation_{method}",
                                   help="Random crops, flips (and colour changes for 'strong') so the model "
                                        "does not learn the pictures by heart.")
    if entry.fixed_input_size:  # the network's design takes its own size only
        image_size = left.number_input("Image size (pixels)", value=entry.preprocessing.input_size, disabled=True,
                                       key=f"image_size_fixed_{backbone}",
                                       help=f"{backbone} takes only {entry.preprocessing.input_size} px pictures.")
    else:
        image_size = left.number_input("Image size (pixels)", 32, 1024,
                                       int(defaults.get("image_size") or entry.preprocessing.input_size),
                                       key=f"image_size_{method}_{backbone}",
                                       help=f"{backbone} was pretrained at {entry.preprocessing.input_size} px.")
    seed = middle.number_input("Seed", 0, 2**31 - 1, int(defaults.get("seed", 0)), key=f"seed_{method}",
                               help="The same seed gives the same result on the CPU.")
    stop_early = right.checkbox("Stop early when validation loss stops improving",
                                value=defaults.get("early_stopping_patience") is not None, key=f"early_{method}")
    patience = right.number_input("Patience (epochs)", 1, 100, int(defaults.get("early_stopping_patience") or 3),
                                  key=f"patience_{method}", disabled=not stop_early)
    label_smoothing = left.slider("Label smoothing", 0.0, 0.5, float(defaults.get("label_smoothing", 0.0)), 0.05,
                                  key=f"smoothing_{method}")
    weight_decay = middle.number_input("Weight decay", 0.0, 1.0, float(defaults.get("weight_decay", 1e-4)),
                                       format="%.5f", key=f"wd_{method}")
    preview_samples = [samples[0] for samples in dataset.by_class("train").values() if samples][:4]
    if preview_samples:
        st.caption(f"What '{augmentation}' augmentation does to a few of your pictures (each column: one picture, three random versions):")
        try:
            versions = reports.augmentation_preview(preview_samples, tuple(s.sha256 for s in preview_samples),
                                                    backbone, int(image_size), augmentation)
        except TransferError as error:
            versions = []
            st.caption(f"The preview is not available: {error}")
        grid = st.columns(len(versions)) if versions else []
        for column, copies in zip(grid, versions):
            column.image(copies, width=96)
    extra: dict = {}
    if method == "features":
        extra["feature_views"] = right.number_input(
            "Views per picture", 1, 16, int(defaults.get("feature_views", 1)), key="views",
            help="The centre crop plus augmented copies; each is computed once and cached.")
    if method == "finetune":
        from ui.blocks import block_count

        blocks = block_count(backbone)
        everything = right.checkbox("Fine-tune every block", value=defaults.get("train_blocks") is None, key="all_blocks")
        extra["train_blocks"] = None if everything else right.slider(
            "Blocks to fine-tune (from the top)", 0, blocks, min(blocks, int(defaults.get("train_blocks") or 2)),
            key="train_blocks", help=f"{backbone} has {blocks} blocks; earlier ones stay frozen.")
        extra["head_only_epochs"] = left.number_input(
            "Head-only epochs first", 0, max(0, int(epochs) - 1), min(int(defaults.get("head_only_epochs", 0)), int(epochs) - 1),
            key="head_only", help="Train the new head alone for a while before unfreezing the backbone.")

    finder_left, finder_right = st.columns([1, 2])
    if finder_left.button("Find a learning rate", icon=":material/search:", key="lr_find",
                          help="A short range test (about 60 steps) in a separate process, as fastai's lr_find."):
        lr_finder_view.start_finder(dataset, method, backbone, int(image_size), int(batch_size))
    lr_finder_view.show_finder(method, lr_key, finder_left, finder_right)

try:
    config = TrainConfig.for_method(
        method,
        dataset=dataset.to_dict(),
        backbone=backbone,
        epochs=int(epochs),
        batch_size=int(batch_size),
        lr=float(lr),
        optimizer=optimizer,
        schedule=schedule,
        augmentation=augmentation,
        image_size=int(image_size),
        seed=int(seed),
        early_stopping_patience=int(patience) if stop_early else None,
        label_smoothing=float(label_smoothing),
        weight_decay=float(weight_decay),
        initial_weights=initial_weights,
        nproc_per_node=gpus,
        **{k: v for k, v in extra.items() if v is not None},
    )
    if method == "finetune" and extra.get("train_blocks") is None:
        config.train_blocks = None
except TransferError as error:
    st.error(str(error))
    st.stop()

settings = config.to_dict()
settings.pop("dataset")
settings["dataset_name"] = choice["name"]
session.save_draft_config(settings)

# ----------------------------------------------------------------------------- estimate
st.subheader("3. Expected training time")
seconds_per_image = stored_forward_seconds(backbone, int(image_size))
if seconds_per_image is None:
    measurement = request_measurement(backbone, int(image_size))
    if measurement.state in ACTIVE_STATES:
        jobs_view.follow_job(measurement, f"Measuring how fast {backbone} runs on this machine", key="estimate_progress")
    else:
        st.warning("The time estimate is not available: " + (measurement.status().get("message") or "the measurement failed."))
else:
    estimate = estimate_training_seconds(
        method, train_images=len(dataset.train), val_images=len(dataset.val), epochs=int(epochs),
        forward_seconds=seconds_per_image, feature_views=int(extra.get("feature_views") or 1),
    )
    st.metric("Estimated time on this machine", describe_seconds(estimate.seconds))
    st.caption(f"Measured {seconds_per_image * 1000:.0f} ms per picture for {backbone} at {int(image_size)} px; "
               f"{estimate.detail}.")
st.page_link("pages/train.py", label="Go to Train to start", icon=":material/rocket_launch:")
