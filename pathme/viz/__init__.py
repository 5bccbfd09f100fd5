"""Previews and heatmaps (import the submodules: they load the slide readers)."""
