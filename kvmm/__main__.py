from kvmm.cli import entry

entry()
