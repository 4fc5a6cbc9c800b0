"""Home: your projects (open, rename, duplicate, delete, start a new one), then what the studio
does, how the three transfer methods differ, and where to start."""

import streamlit as st

from transfer.models.catalogue import METHODS
from ui import pages_mode, projects_view

pages_mode.run_through_app_py()  # a link straight to this file on a server not started by ./studio app
st.title("Transfer Studio")
projects_view.your_projects()
st.markdown(
    "Teach a computer to tell your pictures apart (cats from dogs, good parts from faulty "
    "ones, healthy leaves from sick ones) without writing code. The studio starts from a "
    "network that has already learned from a million photos and adapts it to your classes. "
    "It runs on this machine, offline, and uses a GPU when there is one."
)

st.subheader("How it works")
st.markdown(
    "1. **Data**: bring a zip or a folder with one sub-folder per class, or build classes "
    "picture by picture. The studio checks them first: unreadable files, duplicates, "
    "pictures filed under two classes, classes too small to learn from.\n"
    "2. **Configure**: pick a pretrained network (a *backbone*) and a way of transferring "
    "what it knows.\n"
    "3. **Train**: watch the accuracy climb; close the tab if you like, training goes on.\n"
    "4. **Evaluate** and **Predict**: see where the model is wrong, drop new pictures on the "
    "page and see what it says, and why."
)

st.subheader("Three ways to transfer what a network knows")
st.table(
    [{"Method": m.title, "What happens": m.summary, "Starts from ImageNet knowledge": "yes" if m.pretrained else "no"}
     for m in METHODS.values()]
)

st.info(
    "The backbones EfficientNet-Lite0, Lite1 and Lite2 ship with the studio and work offline. "
    "More than 80 torchvision models and the timm library can be used too; their weights are "
    "downloaded once when this machine is online, then kept."
)
