"""Helpers shared by the test packages (hosting apps on loopback, cloud stand-in set-up)."""
