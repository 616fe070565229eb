"""Jobs (long commands run asynchronously) and the event logs their streams read."""
