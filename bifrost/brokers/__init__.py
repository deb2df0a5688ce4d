"""How a broadcast reaches every process with subscribers: in-process, or through Redis."""
