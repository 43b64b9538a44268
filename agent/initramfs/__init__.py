"""Initramfs builder: ELF closure, Python runtime, kernel modules, assembly and checks."""
