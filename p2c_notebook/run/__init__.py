"""The run: its folder and manifest (store), the orchestrator (pipeline), estimates, events, the log."""
