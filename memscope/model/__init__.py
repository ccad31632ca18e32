"""Reference allocator models (buddy, SLUB) and the replay of trace events through them."""
