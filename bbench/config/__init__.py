"""Typed run specifications, presets and command-line overrides."""
