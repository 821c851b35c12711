"""Fetch and decode live-stream media with PyAV and pick the frames worth classifying."""
