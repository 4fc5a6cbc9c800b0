"""Transfer Studio's engine: backbones, head surgery, transfer methods, data, training, prediction.

Plain Python with no web framework: the Streamlit pages and the ``transfer`` command are thin
layers over this package. Its verbs (see :mod:`transfer.api`) load the engine only when called,
so ``import transfer`` stays light (no torch)::

    import transfer
    run = transfer.train("photos/", method="features")
    print(run.predict(["new.jpg"])[0].label)
"""

from transfer.api import Run, audit, check, open_run, runs, suggest, train

__version__ = "0.1.0"
__all__ = ["Run", "audit", "check", "open_run", "runs", "suggest", "train", "__version__"]
