"""Semantic Bridging Decoder: geometry tokens -> per-pixel language latents (train, render).

Modules, one job each: `model` (the network), `data` (training data per frame), `settings`
(training settings, learning-rate schedule), `losses`, `checkpointing` (resumable checkpoints,
final weights, loss plot), `loop` (the training loop), `train` and `render` (the commands).
"""
