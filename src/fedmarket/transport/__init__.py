"""How providers' updates reach the aggregator.

By default roles exchange messages through the mailbox and blobs through the content-addressed
store (`fedmarket.storage`). `fedmarket.transport.flower` runs each market round on Flower's
Deployment Engine instead (the optional `flower` extra): the aggregator's SuperLink runs the
market's Flower app (`flower_app/`, whose bundle hash the job spec names), each provider's
SuperNode trains with the market's provider code and returns its signed update; on arrival
every blob is checked against its content id and filed in the aggregator's own store and
mailbox, so the market round that follows is byte for byte the same. `flower_nodes` starts and
stops the Flower processes; `flower_guard` is the provider's `flwr-clientapp`, which refuses
any other bundle.
"""
