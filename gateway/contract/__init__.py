"""The wire contract both sides share, with no I/O: envelopes (build, parse, verify), RFC
8785 canonical JSON, Ed25519 keys and signatures, and MQTT topic names."""
