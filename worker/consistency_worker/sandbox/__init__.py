"""Running untrusted programs (model-written code and its tests) in separate, confined processes: the
worker-side pool of sandbox hosts and its public calls (`pool`: `Sandbox`, `run_program`, `run_many`;
the layers of containment are described there), its data types (`types`), what the platform allows
(`probe`: namespaces, cgroups, Landlock, seccomp, a fresh uid), the handle of one host process
(`hosts`), and the three modules the host itself runs, stdlib only and never imported by the worker:
the `python -I -S` host that forks one child per program (`_host`), what that child does to confine
itself and run the program (`_child`) and the seccomp / Landlock layers by ctypes (`_confine`)."""
