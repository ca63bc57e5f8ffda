"""Data: formats (reading + detection), check, render (templates + loss masks), batching, prepare."""
