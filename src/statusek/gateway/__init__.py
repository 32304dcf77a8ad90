"""The gateway: the original Go Statusek's REST API over HTTP, answered by the workers over RabbitMQ."""
