"""How providers' updates reach the aggregator.

By default roles exchange messages through the mailbox and blobs through the content-addressed
store (`fedmarket.storage`): any shared directory or IPFS node. `fedmarket.transport.flower`
carries the same signed messages and blobs over Flower's gRPC instead (the optional `flower`
extra); on arrival every blob is checked against its content id and filed in the aggregator's own
store and mailbox, so the market round that follows is byte for byte the same.
"""
