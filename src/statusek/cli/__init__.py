"""The `statusek` command line: the worker's and the gateway's commands, and the remote ones a client runs."""
