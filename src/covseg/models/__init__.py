"""Segmentation models, registered by name (see ``covseg.models.registry``)."""
