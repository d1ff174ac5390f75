"""Federated-learning core (pure numpy): datasets, partitions, models, local training, quantisation, aggregation strategies, attacks, simulation."""
