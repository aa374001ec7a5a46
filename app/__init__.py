"""The user-facing layer: the `var` command line and the Gradio web UI."""
