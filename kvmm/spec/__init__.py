"""Typed specs: one per thing a user configures, with Firecracker's JSON field
names, shared by the CLI, the configuration file, the API, the builder and the
devices. Each is built from JSON (`from_json`) or from CLI text (`from_cli`)
through one set of checks; a SpecError names the field and says what to do.
"""
from kvmm.spec.base import SpecError, parse_amount
from kvmm.spec.devices import DriveSpec, NetworkInterfaceSpec, format_mac, parse_mac
from kvmm.spec.ratelimit import RateLimiterSpec, TokenBucketSpec
from kvmm.spec.vm import (
    BootSourceSpec, HostSpec, LoggerSpec, MachineSpec, MetricsSpec, MmdsConfigSpec, VmSpec,
)

__all__ = ["SpecError", "parse_amount", "DriveSpec", "NetworkInterfaceSpec", "format_mac",
           "parse_mac", "RateLimiterSpec", "TokenBucketSpec", "BootSourceSpec", "HostSpec",
           "LoggerSpec", "MachineSpec", "MetricsSpec", "MmdsConfigSpec", "VmSpec"]
