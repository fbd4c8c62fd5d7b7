"""Small shared helpers: atomic file writes, devices and dtypes, progress bars."""
