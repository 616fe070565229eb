"""The session core: the manager of all sessions and one session's worker and state."""
