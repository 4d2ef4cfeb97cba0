"""From verdict to action: engine rollback and explicit degraded serving (``docs/actions.md``).

- :mod:`~sidecar.actions.config`: the ``actions:`` section (off by default, opt-in per engine);
- :mod:`~sidecar.actions.evidence`: blame (GPU-level fault vs engine fault) and pressure, pure;
- :mod:`~sidecar.actions.rollback`, :mod:`~sidecar.actions.degrade`: the state machines, pure;
- :mod:`~sidecar.actions.repository`: the KServe v2 model repository client (the I/O edge);
- :mod:`~sidecar.actions.component`: the component wiring them, :mod:`~sidecar.actions.metrics`.
"""
