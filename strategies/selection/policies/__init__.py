"""Built-in selection policies, one file each (imported when :data:`POLICIES` is read)."""
