"""Federated-learning core: datasets, partitions, model, local training, quantisation, aggregation."""
