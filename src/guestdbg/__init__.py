"""guestdbg: debug a virtual machine's guest with GDB, LLDB or Python.

Layers, from the bottom: `guestdbg.kvm` (KVM uAPI names), `guestdbg.arm` (pure Arm
architecture models: debug registers, page tables, ONE_REG ids), `guestdbg.backends`
(vCPUs behind the KVM-shaped interface), `guestdbg.board` (the machine a guest sees, and the
VMM loop), `guestdbg.snapshot` and `guestdbg.cli`.
"""

__version__ = "0.1.0"
