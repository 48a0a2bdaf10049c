"""Site supervision: what the command center must know without asking.

- ``reporter`` — ``TroubleReporter``: turns condition changes into durable ``trouble`` /
  ``restore`` envelopes with the flapping rule of PROTOCOL.md.
- ``bollard`` — limit switches (gpiozero) and/or the controller's HTTP status.
- ``camera`` — the recorder's recording and retention, behind an ``NvrAdapter``.
- ``boxlink`` — button-box link supervision (SERIAL.md "Rules").
- ``selfcheck`` — the gateway itself: disk, clock, certificates, key permissions.
- ``takeover`` — another client took the gateway's broker session over (a second gateway
  with the same id).
- ``heartbeat`` — the signed periodic snapshot (never written to disk).
- ``site`` — ``SiteMonitors``: builds all of the above for one gateway.

Every monitor is a separate supervised task (gateway/supervise.py) that only reads its
device and calls the reporter; none of them is on the alarm path.
"""
