"""Front-end assets of the notebook widgets (installed as `p2c_notebook.assets`)."""
