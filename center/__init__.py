"""The command center: verifies, de-duplicates and acknowledges what the gateways send, and
watches each registered gateway's liveness."""
