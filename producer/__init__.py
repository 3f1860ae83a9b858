"""catalog-tagger's producer: list a catalogue and enqueue it in chunks (never imports torch)."""
