"""What a stage process learns about the machine it runs on, and the bookkeeping every layer shares: the
pod's CPU and memory limits read from cgroups and the thread pools sized to them (`pod_limits`), every
derived random seed (`seeds`), and the progress bar / log lines / progress file (`progress`). The bottom
layer of the worker: it imports nothing else of the package."""
