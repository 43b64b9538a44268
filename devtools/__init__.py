"""Development tooling: the QEMU harness, the images the VM tests and benchmarks boot, the demo
root and the demo's bake step, and hostile layer tars. Used by tests/, scripts/ and bench/
only; not part of the shipped package (setup.cfg packages `agent` alone).

Importable from the repository's root: pytest puts it on sys.path (`pythonpath = .` in
setup.cfg) and scripts/*.py add it themselves, as they do for `agent`.
"""
