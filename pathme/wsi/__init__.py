"""Slides, µm/px, tissue, the region grid and one-read multi-scale tiles."""
