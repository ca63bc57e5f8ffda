"""Data: formats and readers (detection, messages, function calling), check, render (templates + loss masks),
batching, prepare, labels, shots."""
