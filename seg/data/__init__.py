"""Cases: one uniform in-memory form for every on-disk format the field uses."""
from cctr.seg.data.case import Case, CaseRef, CaseError

__all__ = ["Case", "CaseRef", "CaseError"]
