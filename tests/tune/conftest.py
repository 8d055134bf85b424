"""The sweep fixtures (sweep_shards, quick_space) live in tests/conftest.py, shared with tests/cluster."""
