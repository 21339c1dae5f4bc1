"""What one op costs: a record with one named field per count the counter keeps.

The same record type holds one op call's cost (made by a rule in :mod:`neurostep.energy.rules`)
and the running sums the counter keeps per module call stack and per op; reports turn the sums
into :class:`neurostep.energy.report.Counts`, which has the same field names plus ``calls``.
"""

from __future__ import annotations

# Field order is the column order of reports and of ``Counts`` (after ``calls``).
FIELDS: tuple[str, ...] = (
    "macs",               # multiply-accumulates on dense operands
    "acs",                # accumulates driven by binary operands (synaptic operations)
    "adds",
    "muls",
    "exps",
    "compares",
    "state_updates",
    "bytes_read",
    "bytes_written",
    "param_bytes_read",   # the part of bytes_read that reads parameters
    "spike_nnz",          # nonzeros of binary activation operands of dense ops
    "spike_numel",        # elements of those operands (spike rate = nnz / numel)
    "dense_macs",         # MACs the dense ops would take with every operand dense
    "sops",               # Spikformer convention: input firing rate x dense MACs (layers after the first)
    "first_layer_macs",   # Spikformer convention: dense MACs of the first layer
)
"""Names of the :class:`CostRecord` fields, in the column order of reports."""


class CostRecord:
    """Counts of one op call, or their sum over the calls of a module call stack or an op kind.

    ``__slots__`` and every field spelled out in ``__init__`` and :meth:`add_into` (no loop over
    :data:`FIELDS`, no dict): the counter makes one record per dispatched op and adds it into two
    sums, so this has to stay about as cheap as a plain list of floats. ``_check_fields`` below
    fails the import if a field is missed in either place.
    """

    __slots__ = FIELDS

    def __init__(
        self,
        macs: float = 0.0,
        acs: float = 0.0,
        adds: float = 0.0,
        muls: float = 0.0,
        exps: float = 0.0,
        compares: float = 0.0,
        state_updates: float = 0.0,
        bytes_read: float = 0.0,
        bytes_written: float = 0.0,
        param_bytes_read: float = 0.0,
        spike_nnz: float = 0.0,
        spike_numel: float = 0.0,
        dense_macs: float = 0.0,
        sops: float = 0.0,
        first_layer_macs: float = 0.0,
    ) -> None:
        self.macs = macs
        self.acs = acs
        self.adds = adds
        self.muls = muls
        self.exps = exps
        self.compares = compares
        self.state_updates = state_updates
        self.bytes_read = bytes_read
        self.bytes_written = bytes_written
        self.param_bytes_read = param_bytes_read
        self.spike_nnz = spike_nnz
        self.spike_numel = spike_numel
        self.dense_macs = dense_macs
        self.sops = sops
        self.first_layer_macs = first_layer_macs

    def add_into(self, first: CostRecord, second: CostRecord) -> None:
        """Add this record into two sums (the counter keeps one per module stack and one per op).

        Both at once so each field is read once, and zero fields (most of them, for most ops)
        are skipped rather than added: this is the counter's per-op hot path.
        """
        if self.macs:
            first.macs += self.macs
            second.macs += self.macs
        if self.acs:
            first.acs += self.acs
            second.acs += self.acs
        if self.adds:
            first.adds += self.adds
            second.adds += self.adds
        if self.muls:
            first.muls += self.muls
            second.muls += self.muls
        if self.exps:
            first.exps += self.exps
            second.exps += self.exps
        if self.compares:
            first.compares += self.compares
            second.compares += self.compares
        if self.state_updates:
            first.state_updates += self.state_updates
            second.state_updates += self.state_updates
        if self.bytes_read:
            first.bytes_read += self.bytes_read
            second.bytes_read += self.bytes_read
        if self.bytes_written:
            first.bytes_written += self.bytes_written
            second.bytes_written += self.bytes_written
        if self.param_bytes_read:
            first.param_bytes_read += self.param_bytes_read
            second.param_bytes_read += self.param_bytes_read
        if self.spike_nnz:
            first.spike_nnz += self.spike_nnz
            second.spike_nnz += self.spike_nnz
        if self.spike_numel:
            first.spike_numel += self.spike_numel
            second.spike_numel += self.spike_numel
        if self.dense_macs:
            first.dense_macs += self.dense_macs
            second.dense_macs += self.dense_macs
        if self.sops:
            first.sops += self.sops
            second.sops += self.sops
        if self.first_layer_macs:
            first.first_layer_macs += self.first_layer_macs
            second.first_layer_macs += self.first_layer_macs

    def as_dict(self) -> dict[str, float]:
        """``{field: value}`` in :data:`FIELDS` order."""
        return {name: getattr(self, name) for name in FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CostRecord):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # mutable: a sum changes as ops are added

    def __repr__(self) -> str:
        nonzero = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items() if value)
        return f"CostRecord({nonzero})"


def _check_fields() -> None:
    """``__init__`` and ``add_into`` name the fields by hand: make sure each one reaches its own slot."""
    values = {name: float(2 ** k) for k, name in enumerate(FIELDS)}   # distinct, so a mix-up shows
    probe, first, second = CostRecord(**values), CostRecord(), CostRecord()
    probe.add_into(first, second)
    if not (probe.as_dict() == first.as_dict() == second.as_dict() == values):
        raise AssertionError("CostRecord.__init__ or CostRecord.add_into misses or mixes up a field of FIELDS")


_check_fields()
