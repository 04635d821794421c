"""The web console: dashboard, quarantine and dead letters, pseudonym map look-ups (``[web]``)."""
