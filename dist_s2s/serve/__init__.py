"""`dist-s2s serve`: an HTTP server with dynamic batching (`batcher`), its API and page (`app`)."""
