"""SandboxPool (stub: being written)."""


class SandboxPool:
    def __init__(self, size, **sandbox_kwargs):
        raise NotImplementedError("SandboxPool is being written")
