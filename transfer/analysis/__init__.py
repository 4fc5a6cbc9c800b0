"""Looking at data and models: evaluation, the label audit, explanations (Grad-CAM)."""
