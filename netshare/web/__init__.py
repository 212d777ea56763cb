"""The HTTP API and web interface (docs/http.md), served by twisted.web."""
