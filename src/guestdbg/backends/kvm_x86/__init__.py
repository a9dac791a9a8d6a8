"""x86-64 guests on Linux KVM (/dev/kvm) through ctypes: vm.py describes the package's modules."""
