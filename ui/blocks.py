"""How many blocks a backbone has, for the fine-tuning slider (computed once per backbone)."""

import streamlit as st


@st.cache_data(show_spinner=False, max_entries=64)
def block_count(backbone: str) -> int:
    import torch

    from transfer.backbones import load_backbone
    from transfer.heads import replace_head
    from transfer.methods import backbone_blocks

    with torch.device("meta"):  # only the structure matters: no memory, no initialisation
        try:
            model = load_backbone(backbone, pretrained=False)
        except NotImplementedError:
            model = None
    if model is None:
        model = load_backbone(backbone, pretrained=False)
    replace_head(model, 2)
    return len(backbone_blocks(model))
