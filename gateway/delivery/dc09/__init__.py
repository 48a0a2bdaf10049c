"""SIA DC-09 (ANSI/SIA DC-09) as a second path to a standard alarm receiver: the frame
format (``frame``, no I/O), the mapping from envelopes to Contact ID (``cid``), the
asyncio transmitter (``transmitter``) and the path's state for status and metrics
(``snapshot``)."""
