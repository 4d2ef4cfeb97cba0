"""RealNvmlBackend error translation against a fake pynvml module (no GPU, no driver)."""

from __future__ import annotations

import asyncio
import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.gpu.backend import (
    UNSUPPORTED,
    DriverNotLoadedError,
    DriverVersionMismatchError,
    EventType,
    GpuLostError,
    NvmlHungError,
    NvmlUnavailableError,
    ResetRequiredError,
    SignalError,
)
from sidecar.gpu.caller import NvmlCaller
from sidecar.gpu.real import RealNvmlBackend

NOT_SUPPORTED, NO_PERMISSION, DRIVER_NOT_LOADED, TIMEOUT = 3, 4, 9, 10
LIBRARY_NOT_FOUND, GPU_IS_LOST, RESET_REQUIRED, LIB_RM_MISMATCH, UNKNOWN = 12, 15, 16, 18, 999


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"fake NVML error {value}")
        self.value = value


class FakeNvml:
    """Just enough of pynvml: one GPU whose calls can be made to fail or hang."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_GPU_IS_LOST = GPU_IS_LOST
    NVML_ERROR_RESET_REQUIRED = RESET_REQUIRED
    NVML_ERROR_DRIVER_NOT_LOADED = DRIVER_NOT_LOADED
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = LIB_RM_MISMATCH
    NVML_ERROR_TIMEOUT = TIMEOUT
    NVML_ERROR_LIBRARY_NOT_FOUND = LIBRARY_NOT_FOUND
    nvmlMemory_v2 = 0x02000028

    def __init__(self) -> None:
        self.fail: dict[str, int] = {}
        self.hang = threading.Event()
        self.release = threading.Event()
        self.handle = object()
        self.events: list[Any] = []
        self.registered: list[int] = []
        self.recovery_return = 0
        self.recovery_value = 0

    def _maybe(self, name: str) -> None:
        if name in self.fail:
            raise FakeNVMLError(self.fail[name])

    def nvmlInit(self) -> None:
        self._maybe("nvmlInit")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "13.580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> object:
        return self.handle

    def nvmlDeviceGetUUID(self, h: object) -> str:
        return "GPU-fake-0"

    def nvmlDeviceGetName(self, h: object) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetPciInfo(self, h: object) -> Any:
        return SimpleNamespace(busId=b"00000000:18:00.0")

    def nvmlDeviceGetCudaComputeCapability(self, h: object) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetMigMode(self, h: object) -> list[int]:
        raise FakeNVMLError(NOT_SUPPORTED)

    def nvmlDeviceGetTotalEccErrors(self, h: object, err_type: int, counter: int) -> int:
        self._maybe("ecc")
        return 7 if err_type == 0 else 0

    def nvmlDeviceGetRemappedRows(self, h: object) -> tuple[int, int, int, int]:
        self._maybe("remap")
        return (1, 0, 0, 0)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: object) -> int:
        raise FakeNVMLError(NOT_SUPPORTED)

    def nvmlDeviceGetFieldValues(self, h: object, ids: list[int]) -> list[Any]:
        self._maybe("fields")
        return [
            SimpleNamespace(
                nvmlReturn=self.recovery_return,
                valueType=1,
                value=SimpleNamespace(uiVal=self.recovery_value),
            )
        ]

    def nvmlDeviceGetMemoryInfo(self, h: object, version: int | None = None) -> Any:
        self._maybe("memory")
        if self.hang.is_set():
            self.release.wait(5)
        return SimpleNamespace(total=100, used=40, free=60)

    def nvmlDeviceGetTemperatureV(self, h: object, sensor: int) -> int:
        self._maybe("temperature")
        return 45

    def nvmlDeviceGetTemperatureThreshold(self, h: object, which: int) -> int:
        return 92 if which == 0 else 87

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: object) -> int:
        return 0x1

    def nvmlDeviceGetComputeMode(self, h: object) -> int:
        return 3

    def nvmlDeviceGetUtilizationRates(self, h: object) -> Any:
        return SimpleNamespace(gpu=12, memory=3)

    def nvmlDeviceGetPcieReplayCounter(self, h: object) -> int:
        self._maybe("pcie")
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, h: object) -> list[Any]:
        return [SimpleNamespace(pid=10, usedGpuMemory=None)]

    def nvmlDeviceValidateInforom(self, h: object) -> None:
        self._maybe("inforom")

    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceGetSupportedEventTypes(self, h: object) -> int:
        return 0xFF9F

    def nvmlDeviceRegisterEvents(self, h: object, mask: int, es: object) -> None:
        self._maybe("register")
        self.registered.append(mask)

    def nvmlEventSetWait_v2(self, es: object, timeout_ms: int) -> Any:
        self._maybe("wait")
        if not self.events:
            raise FakeNVMLError(TIMEOUT)
        return self.events.pop(0)

    def nvmlEventSetFree(self, es: object) -> None:
        pass


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml()


def opened(fake: FakeNvml) -> RealNvmlBackend:
    backend = RealNvmlBackend(nvml=fake)
    info = backend.open()
    assert info.driver_version == "580.159.04"
    return backend


@pytest.mark.parametrize(
    ("code", "exc", "reason"),
    [
        (DRIVER_NOT_LOADED, DriverNotLoadedError, "DriverNotLoaded"),
        (LIB_RM_MISMATCH, DriverVersionMismatchError, "DriverVersionMismatch"),
        (LIBRARY_NOT_FOUND, NvmlUnavailableError, "NvmlUnavailable"),
        (NO_PERMISSION, NvmlUnavailableError, "NvmlUnavailable"),
    ],
)
def test_init_failures_are_unavailable(
    fake: FakeNvml, code: int, exc: type[Exception], reason: str
) -> None:
    """nvmlInit errors become NvmlUnavailableError subclasses carrying NVML's text."""
    fake.fail["nvmlInit"] = code
    with pytest.raises(exc) as info:
        RealNvmlBackend(nvml=fake).open()
    assert isinstance(info.value, NvmlUnavailableError)
    assert info.value.reason == reason
    assert f"fake NVML error {code}" in info.value.text


def test_enumeration_and_sample_values(fake: FakeNvml) -> None:
    """Devices and every signal are read and converted (bytes names, None process memory)."""
    backend = opened(fake)
    [info] = backend.devices()
    assert info.uuid == "GPU-fake-0" and info.name == "NVIDIA H200"
    assert info.pci_bus_id == "00000000:18:00.0" and not info.mig_enabled
    assert info.compute_capability == "9.0"
    s = backend.sample("GPU-fake-0")
    assert s.ecc.volatile_corrected == 7 and s.ecc.volatile_uncorrected == 0  # type: ignore[union-attr]
    assert s.remap.correctable == 1 and not s.remap.failure  # type: ignore[union-attr]
    assert s.retired_pages_pending is UNSUPPORTED
    assert s.recovery_action == 0
    assert s.memory.free == 60  # type: ignore[union-attr]
    assert s.temperature_c == 45 and s.shutdown_threshold_c == 92 and s.slowdown_threshold_c == 87
    assert s.compute_mode == 3 and s.utilization_gpu_pct == 12
    assert s.processes[0].pid == 10 and s.processes[0].used_bytes is None  # type: ignore[index]


def test_not_supported_is_unmonitored(fake: FakeNvml) -> None:
    """NOT_SUPPORTED on a signal -> UNSUPPORTED for that signal only."""
    backend = opened(fake)
    fake.fail["remap"] = NOT_SUPPORTED
    fake.fail["ecc"] = NOT_SUPPORTED
    s = backend.sample("GPU-fake-0")
    assert s.remap is UNSUPPORTED and s.ecc is UNSUPPORTED
    assert s.temperature_c == 45


def test_recovery_action_field_status_is_checked(fake: FakeNvml) -> None:
    """The field-values call succeeds while the field fails: its nvmlReturn is honoured."""
    backend = opened(fake)
    fake.recovery_return = NOT_SUPPORTED
    assert backend.sample("GPU-fake-0").recovery_action is UNSUPPORTED
    fake.recovery_return, fake.recovery_value = 0, 2
    assert backend.sample("GPU-fake-0").recovery_action == 2


def test_gpu_lost_aborts_sample(fake: FakeNvml) -> None:
    """GPU_IS_LOST from any call -> GpuLostError for that GPU."""
    backend = opened(fake)
    fake.fail["pcie"] = GPU_IS_LOST
    with pytest.raises(GpuLostError) as info:
        backend.sample("GPU-fake-0")
    assert info.value.uuid == "GPU-fake-0" and info.value.reason == "GpuLost"


def test_reset_required_aborts_sample(fake: FakeNvml) -> None:
    """RESET_REQUIRED -> ResetRequiredError."""
    backend = opened(fake)
    fake.fail["temperature"] = RESET_REQUIRED
    with pytest.raises(ResetRequiredError):
        backend.sample("GPU-fake-0")


def test_other_errors_are_signal_errors(fake: FakeNvml) -> None:
    """UNKNOWN / NO_PERMISSION on one signal -> SignalError for it; the rest is read."""
    backend = opened(fake)
    fake.fail["memory"] = NO_PERMISSION
    fake.fail["pcie"] = UNKNOWN
    s = backend.sample("GPU-fake-0")
    assert isinstance(s.memory, SignalError) and s.memory.reason == "NvmlNoPermission"
    assert isinstance(s.pcie_replay_count, SignalError)
    assert s.temperature_c == 45


def test_inforom(fake: FakeNvml) -> None:
    """ValidateInforom: OK -> True, CORRUPTED_INFOROM -> False, NOT_SUPPORTED -> UNSUPPORTED."""
    backend = opened(fake)
    assert backend.validate_inforom("GPU-fake-0") is True
    fake.fail["inforom"] = 14
    assert backend.validate_inforom("GPU-fake-0") is False
    fake.fail["inforom"] = NOT_SUPPORTED
    assert backend.validate_inforom("GPU-fake-0") is UNSUPPORTED


def test_events_registration_and_wait(fake: FakeNvml) -> None:
    """Registration masks with the supported types; wait maps the handle to the UUID; NVML's
    TIMEOUT is a plain None; GPU_IS_LOST from the wait is GpuLostError."""
    backend = opened(fake)
    [reg] = backend.register_events(["GPU-fake-0"])
    assert reg.registered & EventType.XID_CRITICAL and not reg.error
    assert fake.registered == [reg.registered]
    assert backend.wait_event(0.01) is None
    fake.events.append(
        SimpleNamespace(
            device=fake.handle,
            eventType=int(EventType.XID_CRITICAL),
            eventData=31,
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        )
    )
    ev = backend.wait_event(0.01)
    assert ev is not None and ev.uuid == "GPU-fake-0" and ev.data == 31
    fake.fail["wait"] = GPU_IS_LOST
    with pytest.raises(GpuLostError):
        backend.wait_event(0.01)


def test_event_registration_not_supported_is_unmonitored(fake: FakeNvml) -> None:
    """NOT_SUPPORTED from RegisterEvents -> nothing registered, reported as unsupported."""
    backend = opened(fake)
    fake.fail["register"] = NOT_SUPPORTED
    [reg] = backend.register_events(["GPU-fake-0"])
    assert reg.registered == 0 and reg.unsupported and not reg.error


def test_missing_pynvml_module_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nvidia-ml-py the backend raises NvmlUnavailableError naming the extra."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(NvmlUnavailableError, match="nvidia-ml-py"):
        RealNvmlBackend().open()


async def test_hanging_call_is_nvml_hung_and_not_stacked(fake: FakeNvml) -> None:
    """A call that does not return -> NvmlHungError after the timeout; the next call is refused
    at once without another thread; after it returns, calls work again."""
    backend = opened(fake)
    unstuck = threading.Event()
    caller = NvmlCaller(on_unstuck=unstuck.set)
    fake.hang.set()
    with pytest.raises(NvmlHungError, match=r"did not return within 0\.1s"):
        await caller.call(lambda: backend.sample("GPU-fake-0"), op="sample", timeout_s=0.1)
    assert not unstuck.is_set()  # it answered while the call was still hung: by the timeout
    threads = threading.active_count()
    attempted: list[str] = []

    def second() -> Any:
        attempted.append("sample")
        return backend.sample("GPU-fake-0")

    with pytest.raises(NvmlHungError, match="not attempted"):
        await caller.call(second, op="sample", timeout_s=0.1)
    assert attempted == []  # refused without calling NVML (nothing to wait for)
    assert threading.active_count() == threads
    fake.hang.clear()
    fake.release.set()
    assert await asyncio.to_thread(unstuck.wait, 2)
    s = await caller.call(lambda: backend.sample("GPU-fake-0"), op="sample", timeout_s=1)
    assert s.temperature_c == 45
    caller.close()


def test_enumeration_failure_is_retried(fake: FakeNvml) -> None:
    """GPU_IS_LOST while enumerating fails open(); the next open() enumerates again."""
    backend = RealNvmlBackend(nvml=fake)
    original = fake.nvmlDeviceGetCount
    fake.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(FakeNVMLError(GPU_IS_LOST))  # type: ignore[method-assign]
    with pytest.raises(GpuLostError):
        backend.open()
    fake.nvmlDeviceGetCount = original  # type: ignore[method-assign]
    backend.open()
    assert [i.uuid for i in backend.devices()] == ["GPU-fake-0"]
