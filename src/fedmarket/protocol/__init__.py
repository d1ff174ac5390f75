"""Protocol encodings shared with the contracts: Merkle trees, leaves, typed receipts."""
