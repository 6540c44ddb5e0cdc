"""The event log on JetStream: stream declaration, publishing, and the projection runner."""
