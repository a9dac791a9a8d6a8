"""guestdbg: debug a virtual machine's guest with GDB, LLDB or Python.

Layers, from the bottom (ARCHITECTURE.md draws them; imports go only downwards):
`guestdbg.kvm` and `guestdbg.vmapi` (KVM uAPI names, and the vCPU interface as typed
Protocols), `guestdbg.arm` and `guestdbg.x86` (pure architecture knowledge), `guestdbg.backends`
(vCPUs behind that interface), `guestdbg.board` (the machine a guest sees and its VMM loop;
`board.common` holds what both boards share), `guestdbg.debug` and `guestdbg.snapshot` (the
debug policy), `guestdbg.gdb` (the remote stub) and `guestdbg.cli`.
"""

__version__ = "0.1.0"
