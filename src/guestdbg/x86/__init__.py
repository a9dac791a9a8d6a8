"""Pure x86-64 knowledge, below the back ends: the register catalogue (`x86.registers`)."""
