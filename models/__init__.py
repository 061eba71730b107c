"""Neural networks of reelsift and their loading (Linear DiT, attention ops, adapters)."""
