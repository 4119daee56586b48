"""Entropy coders built on the diffusion prior."""
