"""Seccomp policy: validated at construction, compiled to BPF in the parent.

(Stub: the compiler is being written; no filter is produced yet.)"""


def validate_policy(policy):
    if policy not in ("default", None):
        raise ValueError("seccomp must be 'default' or None")
    return policy


def compile_filter(policy):
    """The filter as raw struct sock_filter[] bytes (b"" = no filter)."""
    return b""
