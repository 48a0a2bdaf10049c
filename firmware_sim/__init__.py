"""Simulators of every wire the gateway touches (button box, GPIO, broker, center)."""
