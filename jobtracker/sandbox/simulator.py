"""The :class:`Sandbox`: a local, seeded stand-in for Hume's batch API and its result bucket."""

from __future__ import annotations

import errno
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from .clock import ClockFn, ManualClock, epoch_for_seed, to_ms
from .content import KINDS, MAX_ARTIFACT_BYTES, ResultFiles
from .faults import FaultConfig, FaultInjector
from .generate import FAILURE_MESSAGES, random_job, random_job_id
from .jobs import COMPLETED, FAILED, FINAL_STATUSES, SimJob
from .requestlog import RequestLog, RequestRecord
from .routes import Backend
from .server import SandboxHTTPServer, ServerThread, bind
from .signing import UrlSigner
from .store import JobStore

DEFAULT_URL_TTL_S = 7 * 24 * 3600.0


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if lo < 0 or hi < lo:
        raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi, got {bounds}")


class Sandbox:
    """A simulated batch API on a loopback address plus a "storage host" for signed URLs.

    Job state is a pure function of the sandbox clock: with the default :class:`ManualClock`
    nothing moves until ``sandbox.clock.advance(...)``.  Use as a context manager::

        with Sandbox(seed=1) as sb:
            ids = sb.add_jobs(100, legacy_fraction=0.1)
            sb.clock.advance(600)
            requests.get(f"{sb.base_url}/v0/batch/jobs", headers={"X-Hume-Api-Key": sb.api_key})

    The storage host binds ``storage_host`` (another 127/8 address, so that it is a different
    host to the client: credentials leaking across hosts show up); if that address cannot be
    bound (non-Linux), it falls back to ``host`` on another port.
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        seed: int = 0,
        faults: FaultConfig | None = None,
        clock: ClockFn | None = None,
        host: str = "127.0.0.1",
        storage_host: str = "127.0.0.2",
        port: int = 0,
        url_ttl_s: float = DEFAULT_URL_TTL_S,
        *,
        storage_port: int = 0,
        artifact_bytes: int = 4096,
        predictions_bytes: int = 2048,
    ) -> None:
        self.api_key = api_key
        self.seed = seed
        self.host = host
        self.storage_host = storage_host
        self.port = port
        self.storage_port = storage_port
        self._manual: ManualClock | None
        if clock is None:
            self._manual = ManualClock(epoch_for_seed(seed))
            clock = self._manual
        else:
            self._manual = clock if isinstance(clock, ManualClock) else None
        self._clock = clock
        # One RNG for everything generated, so a seed fixes ids, schedules and configs.
        self._rng = random.Random(seed)
        self._store = JobStore()
        _check_size(artifact_bytes)
        # Derived from the seed (not os.urandom) so that two same-seed runs sign identically.
        secret = hashlib.sha256(f"jobtracker-sandbox-url-secret\x00{seed}".encode()).digest()
        self._backend = Backend(
            api_key=api_key,
            store=self._store,
            files=ResultFiles(seed, predictions_bytes, artifact_bytes),
            signer=UrlSigner(secret),
            clock=clock,
            log=RequestLog(),
            injector=FaultInjector(faults or FaultConfig(), seed),
            url_ttl_s=url_ttl_s,
        )
        self._servers: dict[str, ServerThread] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind both hosts and serve them from daemon threads; returns ``self``."""
        if self._servers:
            raise RuntimeError("sandbox already started")
        api = bind(self.host, self.port, self._backend, "api")
        try:
            storage = self._bind_storage()
        except BaseException:
            api.server_close()
            raise
        self._servers = {"api": ServerThread(api), "storage": ServerThread(storage)}
        host, port = self._servers["storage"].address
        self._backend.storage_url = f"http://{host}:{port}"
        for thread in self._servers.values():
            thread.start()
        return self

    def _bind_storage(self) -> SandboxHTTPServer:
        try:
            return bind(self.storage_host, self.storage_port, self._backend, "storage")
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            return bind(self.host, 0, self._backend, "storage")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both hosts and close their open connections (each waits at most ~timeout)."""
        servers, self._servers = self._servers, {}
        for thread in servers.values():
            thread.stop(timeout)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _address(self, role: str) -> str:
        thread = self._servers.get(role)
        if thread is None:
            raise RuntimeError(
                "sandbox is not running; call start() or use it as a context manager"
            )
        host, port = thread.address
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """Root URL of the API host, e.g. ``http://127.0.0.1:41234``."""
        return self._address("api")

    @property
    def storage_url(self) -> str:
        """Root URL of the storage host that serves signed result URLs."""
        return self._address("storage")

    # --- time, faults, sizes -----------------------------------------------------------------

    @property
    def clock(self) -> ManualClock:
        """The sandbox's manual clock (``now()``, ``advance(s)``, ``set(t)``).

        Raises ``TypeError`` when the sandbox runs on a caller-supplied clock function; use
        :meth:`now` to read the time in either case.
        """
        if self._manual is None:
            raise TypeError("this sandbox runs on a caller-supplied clock; it cannot be advanced")
        return self._manual

    def now(self) -> float:
        """Current sandbox time in epoch seconds."""
        return self._clock()

    @property
    def faults(self) -> FaultConfig:
        """The active fault configuration; assign a new one to switch faults at run time."""
        return self._backend.injector.config

    @faults.setter
    def faults(self, config: FaultConfig | None) -> None:
        # A fresh injector restarts the seeded sequence, so a test that switches faults on gets
        # the same faults every run regardless of what happened before.
        self._backend.injector = FaultInjector(config or FaultConfig(), self.seed)

    @property
    def artifact_bytes(self) -> int:
        """Exact size of every artifacts zip (bytes); may be changed at run time."""
        return self._backend.files.artifact_bytes

    @artifact_bytes.setter
    def artifact_bytes(self, size: int) -> None:
        _check_size(size)
        self._backend.files.artifact_bytes = size

    @property
    def predictions_bytes(self) -> int:
        """Approximate size of every predictions document (bytes); may be changed at run time."""
        return self._backend.files.predictions_bytes

    @predictions_bytes.setter
    def predictions_bytes(self, size: int) -> None:
        self._backend.files.predictions_bytes = size

    @property
    def url_ttl_s(self) -> float:
        """Lifetime of signed storage URLs handed out from now on."""
        return self._backend.url_ttl_s

    @url_ttl_s.setter
    def url_ttl_s(self, seconds: float) -> None:
        self._backend.url_ttl_s = seconds

    # --- jobs ---------------------------------------------------------------------------------

    @property
    def jobs(self) -> Mapping[str, SimJob]:
        """All jobs by id (a read-only live view; do not mutate the jobs)."""
        return self._store.view()

    def add_jobs(
        self,
        n: int,
        *,
        legacy_fraction: float = 0.0,
        fail_fraction: float = 0.1,
        models: Sequence[str] | None = None,
        created_at: float | None = None,
        queue_s: tuple[float, float] = (1.0, 30.0),
        run_s: tuple[float, float] = (5.0, 120.0),
        id_factory: Callable[[int], str] | None = None,
        same_ms: bool = False,
        spread_s: float = 0.0,
    ) -> list[str]:
        """Create ``n`` jobs with seeded random requests and schedules; return their ids.

        Creation times end at ``created_at`` (default: the clock now).  By default they are
        consecutive milliseconds (job ``n-1`` at ``created_at``); ``spread_s > 0`` scatters them
        at random over the preceding ``spread_s`` seconds (collisions possible, as in real life);
        ``same_ms=True`` puts them all in one millisecond.  ``models`` fixes the model set of
        every job (default: 1-3 random models each).  ``id_factory(i)`` supplies the id of the
        ``i``-th job instead of a seeded UUID.
        """
        for name, fraction in (
            ("legacy_fraction", legacy_fraction),
            ("fail_fraction", fail_fraction),
        ):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {fraction}")
        _check_range("queue_s", queue_s)
        _check_range("run_s", run_s)
        base_ms = to_ms(self.now() if created_at is None else created_at)
        rng = self._rng
        batch = []
        for i in range(n):
            job_id = id_factory(i) if id_factory is not None else random_job_id(rng)
            if same_ms:
                created_ms = base_ms
            elif spread_s > 0:
                created_ms = base_ms - round(rng.uniform(0.0, spread_s) * 1000)
            else:
                created_ms = base_ms - (n - 1 - i)
            batch.append(
                random_job(
                    rng,
                    job_id,
                    created_ms=created_ms,
                    queue_s=queue_s,
                    run_s=run_s,
                    legacy=rng.random() < legacy_fraction,
                    failed=rng.random() < fail_fraction,
                    models=models,
                )
            )
        self._store.add(batch)
        return [job.job_id for job in batch]

    def add_job(
        self,
        job_id: str | None = None,
        *,
        created_at: float | None = None,
        queue_s: float = 1.0,
        run_s: float = 5.0,
        status: str = COMPLETED,
        error: str | None = None,
        legacy: bool = False,
        models: Sequence[str] | Mapping[str, dict[str, Any]] | None = None,
        urls: Sequence[str] | None = None,
        files: Sequence[Mapping[str, str]] | None = None,
        text: Sequence[str] | None = None,
        callback_url: str | None = None,
        notify: bool = False,
        num_predictions: int | None = None,
        num_errors: int = 0,
    ) -> str:
        """Create one job with an explicit schedule and final ``status``; return its id.

        ``models`` is either raw configs (used verbatim) or model names (configs generated).
        Unspecified request parts are drawn from the seeded RNG.  A FAILED job without
        ``error`` gets the usage-limit message.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        if queue_s < 0 or run_s < 0:
            raise ValueError("queue_s and run_s must not be negative")
        rng = self._rng
        job = random_job(
            rng,
            job_id if job_id is not None else random_job_id(rng),
            created_ms=to_ms(self.now() if created_at is None else created_at),
            queue_s=(queue_s, queue_s),
            run_s=(run_s, run_s),
            legacy=legacy,
            failed=status == FAILED,
            models=None if isinstance(models, Mapping) else models,
        )
        if isinstance(models, Mapping):
            job.models = {name: dict(cfg) for name, cfg in models.items()}
        if urls is not None:
            job.urls = list(urls)
        if files is not None:
            job.files = [dict(f) for f in files]
        if text is not None:
            job.text = list(text)
        job.callback_url = callback_url
        job.notify = notify
        job.error = (error or FAILURE_MESSAGES[0]) if status == FAILED else None
        if num_predictions is not None:
            job.num_predictions = num_predictions
        job.num_errors = num_errors
        self._store.add([job])
        return job.job_id

    def set_final(self, job_id: str, status: str, error: str | None = None) -> None:
        """Change how a job ends (COMPLETED or FAILED); a FAILED job needs a message."""
        if job_id not in self._store:
            raise KeyError(f"no sandbox job {job_id!r}")
        if status == FAILED and error is None:
            error = FAILURE_MESSAGES[0]
        self._store.set_final(job_id, status, error)

    # --- results ------------------------------------------------------------------------------

    def expected_sha256(self, job_id: str, kind: str) -> str:
        """Hex SHA-256 that a full download of ``kind`` (predictions/artifacts/errors) has."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        job = self._store.get(job_id)
        if job is None:
            raise KeyError(f"no sandbox job {job_id!r}")
        return self._backend.files.sha256(job, kind)

    def expected_size(self, job_id: str, kind: str) -> int:
        """Byte length of the full body of ``kind`` for a job."""
        job = self._store.get(job_id)
        if job is None:
            raise KeyError(f"no sandbox job {job_id!r}")
        return self._backend.files.body(job, kind).size

    def signed_url(self, job_id: str, kind: str, expires: float | None = None) -> str:
        """A storage-host URL for a result file, signed like the legacy job detail's URLs."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._address("storage")  # fail clearly when not started
        return self._backend.signed_url(job_id, kind, None if expires is None else int(expires))

    # --- request log --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request received on either host, oldest first."""
        return self._backend.log.records()

    def request_count(self, role: str | None = None) -> int:
        """Number of requests received (``role``: ``"api"``, ``"storage"`` or ``None`` for both)."""
        return self._backend.log.count(role)

    def clear_log(self) -> None:
        """Forget all recorded requests."""
        self._backend.log.clear()


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_ARTIFACT_BYTES:
        raise ValueError(f"artifact_bytes must be between 0 and {MAX_ARTIFACT_BYTES}")
