"""Running the generated repository: a sandboxed smoke or full run whose output is saved in the run folder."""
