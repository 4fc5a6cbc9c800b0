"""The bottom layer: errors, paths, files written atomically, locks, JSON, run directories, child processes, the machine."""
