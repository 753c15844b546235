"""HTTP server and web demo."""
