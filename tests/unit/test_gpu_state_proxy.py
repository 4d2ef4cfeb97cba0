"""The GpuStateView proxy other components hold across a GPU component swap."""

from __future__ import annotations

from sidecar.gpu.state_proxy import GpuStateProxy


class FakeGpu:
    def __init__(self, generation: int, fault: bool = False) -> None:
        self.generation = generation
        self.fault = fault

    def exclusive_process(self) -> bool:
        return False

    def busy(self) -> bool:
        return True

    def reset_generation(self) -> int:
        return self.generation

    def gpu_fault(self) -> bool:
        return self.fault

    def compute_capability(self) -> str:
        return "9.0"


def test_swap_is_not_a_reset_and_later_resets_still_count() -> None:
    """Replacing the GPU component keeps reset_generation() steady; a real reset after the
    swap still changes it (sticky canary latches clear only on real evidence)."""
    proxy = GpuStateProxy()
    assert (proxy.reset_generation(), proxy.gpu_fault(), proxy.compute_capability()) == (0, False, None)
    old = FakeGpu(generation=2)
    proxy.swap(old)
    assert proxy.reset_generation() == 0
    old.generation = 3  # a reset observed by the old component
    assert proxy.reset_generation() == 1
    new = FakeGpu(generation=0, fault=True)
    proxy.swap(new)
    assert proxy.reset_generation() == 1
    assert proxy.gpu_fault() and proxy.busy() and proxy.compute_capability() == "9.0"
    new.generation = 1
    assert proxy.reset_generation() == 2
