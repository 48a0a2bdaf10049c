"""What a technician reaches: the local HTTP endpoint, status and metrics, ``diag`` and the
``status`` / ``queue`` / ``test-alarm`` tools with their client of the endpoint."""
