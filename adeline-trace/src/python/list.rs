//! `adeline-trace list -p PID --python`: the Python functions a process has.
