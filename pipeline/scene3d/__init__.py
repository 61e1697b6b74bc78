"""GPT4Scene-style scene prompts from a reconstruction: objects lifted to 3D boxes, a fused cloud,
a bird's-eye view and marked frames with the same object ids, and 3D grounding without a VLM."""
