"""The ServerApp (on the aggregator's SuperLink): each market round sent to the SuperNodes, the
signed updates checked and filed for the aggregator (fedmarket.transport.flower.serve_job)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmarket.transport.flower import serve_job

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve_job(grid, context)
