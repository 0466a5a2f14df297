"""The only package that speaks raw KVM: ioctl numbers, structs, Kvm/Vm/Vcpu."""
from kvmm.ioctl.errors import HostNotSupported, KvmError
from kvmm.ioctl.kvm import Kvm, Vcpu, Vm

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "HostNotSupported"]
