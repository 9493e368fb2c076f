"""condiff serve: the HTTP server (A1111-compatible API, condiff routes, one job queue). See app.py, jobs.py, state.py."""
