"""The school gatehouse gateway: the Pi daemon and its technician CLI."""

__version__ = "0.1.0"
