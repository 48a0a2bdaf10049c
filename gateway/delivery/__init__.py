"""The alarm's path after an input: the relay (the inputs' ``AlarmSink``), the durable
SQLite outbox, the seq counter, the re-send timer and the MQTT uplink."""
