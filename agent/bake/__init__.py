"""Baking extensions into an initramfs: `overlay-agent build` and `inspect`."""
