"""One construct per concern; the stack in `stacks/di_stack.py` wires them together."""
