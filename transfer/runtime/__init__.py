"""Work in the background: the queue, workers, distributed launch, clean-up, page helpers."""
