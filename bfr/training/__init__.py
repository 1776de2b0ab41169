"""Training loops for the compact tier: each file reads as data → model → loop → save card."""
