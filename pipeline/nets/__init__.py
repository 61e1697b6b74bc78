"""Network parts shared by more than one model (the geometry heads and the decoder)."""
