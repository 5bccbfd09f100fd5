"""Previews and heatmaps."""
