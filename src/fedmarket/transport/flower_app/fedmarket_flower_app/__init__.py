"""fedmarket's Flower app: a ServerApp that relays market rounds, a ClientApp that trains with the provider's code."""
