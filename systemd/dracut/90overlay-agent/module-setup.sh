#!/bin/bash
# dracut module of overlay-agent: the same content as the initramfs-tools hook (the loop,
# squashfs, overlay and dm-verity modules, hook mode's Python runtime, the extensions of
# /etc/overlay-agent/machine.yaml, in the store of /etc/overlay-agent/store.conf if set),
# run by a systemd unit in a systemd initrd or by a pre-pivot hook without systemd. A failure stops dracut, which keeps the old initramfs.

check() {
    require_binaries /usr/bin/overlay-agent || return 1
    return 0
}

depends() {
    return 0
}

installkernel() {
    instmods loop squashfs overlay
    # checks layers' blocks as they are read: trees are baked only where veritysetup is
    if command -v veritysetup >/dev/null 2>&1; then
        instmods dm-verity
    fi
}

install() {
    # the modules must be in the tree before the agent lists them
    instmods loop squashfs overlay
    if command -v veritysetup >/dev/null 2>&1; then
        instmods dm-verity
    fi
    if ! /usr/bin/overlay-agent initramfs-hook --destdir "$initdir" \
            --kernel-release "$kernel" --modules-dir "$srcmods"; then
        dfatal "overlay-agent: cannot add the extensions to the initramfs"
        exit 1
    fi
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/overlay-agent.service" "$systemdsystemunitdir/overlay-agent.service"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target overlay-agent.service
    else
        inst_hook pre-pivot 50 "$moddir/overlay-agent-pre-pivot.sh"
    fi
}
