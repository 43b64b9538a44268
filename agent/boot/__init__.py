"""PID 1 of the initramfs and the boot-time activation of extensions."""
