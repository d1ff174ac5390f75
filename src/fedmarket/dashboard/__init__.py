"""`fedmarket dashboard`: a web view of a deployment's jobs, fed by an event indexer (SQLite) and
updated live (server-sent events) as blocks arrive. Starlette + Jinja2, served by uvicorn."""
