"""The GDB remote-serial-protocol side of guestdbg: register catalogue, target XML, memory map."""
