"""The dispatchers' web console, served by the running center (``[console] listen``)."""
