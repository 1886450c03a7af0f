"""The pure core: the domain model, the rules and the ports. It imports only the
standard library and itself (tests/unit/test_purity.py checks), so every rule is tested
in microseconds, without a database or a clock."""
