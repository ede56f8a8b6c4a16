"""Running untrusted programs (model-written code and its tests): the worker-side pool of sandbox hosts
and its public calls (`pool`: `Sandbox`, `run_program`, `run_many`), what the platform allows
(`probe`: namespaces, cgroups, Landlock, seccomp), the handle of one host process (`hosts`), and the
two modules the host itself runs, stdlib only: the `python -I -S` host that forks one confined child per
program (`_host`, with `_host_run`) and the seccomp / Landlock layers by ctypes (`_confine`)."""
