"""Evaluation of trained runs: sample quality (``quality``: ``alphaflow eval``), the offline gradient probe
(``offline_probe``: ``alphaflow probe``) and the callbacks that run both inside a training run."""
