"""Language features: per-mask CLIP-slot embeddings, per-object state-caption embeddings, autoencoders."""
