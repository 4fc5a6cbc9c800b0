"""Transfer Studio's engine: backbones, head surgery, transfer methods, data, training, prediction.

Plain Python with no web framework: the Streamlit pages and the ``transfer`` command are thin
layers over this package.
"""

__version__ = "0.1.0"
