#!/bin/sh
# dracut pre-pivot hook of overlay-agent (an initramfs without systemd): stacks the
# extensions on the root at $NEWROOT before the switch. Sourced by dracut; non-zero only
# under overlay_agent.strict.
if [ -x /usr/bin/overlay-agent ] && [ -e /extensions.yaml ]; then
    if ! /usr/bin/overlay-agent boot --root "$NEWROOT"; then
        die "overlay-agent: extension activation failed (overlay_agent.strict)"
    fi
fi
