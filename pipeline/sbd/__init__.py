"""Semantic Bridging Decoder: geometry tokens -> per-pixel language latents (train, render)."""
