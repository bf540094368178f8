"""Query/Retrieve C-FIND SCU for tests/query_retrieve.rs (pynetdicom).

Reads a job as JSON on stdin:
  {"port": N, "aec": "GW", "model": "S" | "P" | "W" (worklist), "relational": bool,
   "queries": [{"name": str, "charset": str | [str] | null,
                "keys": {"Keyword": value | [values] | null | {item keys}, ...},
                "from_file": path | null, "file_keys": ["PatientName", ...]}]}
`from_file` copies (0008,0005) and the `file_keys` values from a stored object (so a name is
queried in the object's own repertoire, encoded by pydicom). Prints one JSON result per query:
  {"name", "status", "pending": [statuses], "matches": [{"Keyword": str | [str]}],
   "error_comment"}
with every text value decoded by pydicom under the response's (0008,0005), which the result
also lists as "SpecificCharacterSet" when present. All queries of a job share one
association, so relational negotiation is per job.
"""

import json
import sys

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind as Worklist,
    PatientRootQueryRetrieveInformationModelFind as PatientRoot,
    StudyRootQueryRetrieveInformationModelFind as StudyRoot,
)


def value_of(elem):
    if elem.VR == "SQ":
        return [{e.keyword: value_of(e) for e in item} for item in elem.value]
    v = elem.value
    if v is None or v == "":
        return ""
    if isinstance(v, (list, pydicom.multival.MultiValue)):
        return [str(x) for x in v]
    return str(v)


def main():
    job = json.load(sys.stdin)
    model = {"P": PatientRoot, "W": Worklist}.get(job.get("model"), StudyRoot)
    ae = AE(ae_title="QRTEST")
    ae.add_requested_context(model)
    ext = []
    if job.get("relational"):
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = model
        item.service_class_application_information = b"\x01"
        ext.append(item)
    assoc = ae.associate("127.0.0.1", job["port"], ae_title=job.get("aec", "GW"), ext_neg=ext)
    if not assoc.is_established:
        print(json.dumps({"error": "association failed"}))
        sys.exit(2)
    results = []
    for q in job["queries"]:
        ds = Dataset()
        if q.get("from_file"):
            src = pydicom.dcmread(q["from_file"])
            ds.SpecificCharacterSet = src.SpecificCharacterSet
            for k in q.get("file_keys", []):
                setattr(ds, k, src.data_element(k).value)
        if q.get("charset") is not None:
            ds.SpecificCharacterSet = q["charset"]
        for k, v in q["keys"].items():
            if isinstance(v, dict):
                # A sequence key with one item.
                item = Dataset()
                for ik, iv in v.items():
                    setattr(item, ik, "" if iv is None else iv)
                setattr(ds, k, [item])
            else:
                setattr(ds, k, "" if v is None else v)
        res = {"name": q["name"], "pending": [], "matches": []}
        for status, ident in assoc.send_c_find(ds, model):
            if status is None:
                res["status"] = -1
                break
            code = status.Status
            if code in (0xFF00, 0xFF01):
                res["pending"].append(code)
                res["matches"].append({e.keyword: value_of(e) for e in ident})
            else:
                res["status"] = code
                res["error_comment"] = str(status.get("ErrorComment", ""))
        results.append(res)
    assoc.release()
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()
