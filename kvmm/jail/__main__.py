"""`python -m kvmm.jail`: `kvmm jail` without the `kvmm` dispatcher."""
import os
import sys

from kvmm.cli.jail import main

sys.stdout.flush()
status = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
