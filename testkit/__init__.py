"""The testing kit: real services, worker processes, images, a tiny model, misbehaving servers.

Shared by the tests and the benchmarks, so that both start services and workers the same way.
"""
