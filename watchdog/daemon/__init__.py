"""The long-running process: its loop and side jobs, start-up, leadership, sd_notify,
its own health, the health endpoint and metrics."""
