"""VGGT-NeRF: a generalizable radiance field on geometry tokens (train, render, evaluate)."""
