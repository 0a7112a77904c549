"""digitd: read handwritten digits from a camera and publish them over MQTT."""

__version__ = "0.1.0"
