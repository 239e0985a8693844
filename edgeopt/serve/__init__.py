"""`edgeopt serve`: the FastAPI runtime server that runs inside every packaged image."""
