"""Loading and normalising prompt data sets (TRL and verl layouts)."""
