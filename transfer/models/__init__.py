"""The networks: the catalogue (torch-free), backbones, heads, own weights, fusion, methods, features."""
