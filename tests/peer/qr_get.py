"""Query/Retrieve C-GET SCU and a storage SCP for C-MOVE, for tests/query_retrieve_retrieve.rs
(pynetdicom).

Reads a job as JSON on stdin.

mode "get": {"port": N, "aec": "GW", "model": "S" | "P", "keys": {"Keyword": value},
             "contexts": [[sop_class, [ts, ...]], ...], "roles": bool}
  Proposes the Study/Patient Root GET model plus each storage context; with "roles", an
  SCP/SCU Role Selection (SCP role) for each storage class. Prints one JSON object:
  {"status", "pending", "completed", "failed", "warning", "failed_uids", "received": [sop]}.
  With "cancel_after": K, a C-CANCEL-RQ is sent from the K-th C-STORE's handler; with
  "abort_after": K, an A-ABORT (then "status" is null).

mode "store_scp": {"port": N, "ae": "DEST", "hold_after": K, "hold_seconds": S,
                   "classes": [sop_class] | null}
  A storage SCP on 127.0.0.1:N (the storage classes listed, default all; the uncompressed
  syntaxes). Each C-STORE is
  printed as a JSON line {"sop", "originator_ae", "originator_id"}; from the (K+1)-th on, each
  answer is held S seconds, so that a C-CANCEL has time to reach the C-MOVE SCP. Prints
  "LISTENING" once it listens; runs until killed.
"""

import json
import sys
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt, AllStoragePresentationContexts
from serve import serve
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet as PatientRootGet,
    StudyRootQueryRetrieveInformationModelGet as StudyRootGet,
)


def get(job):
    ae = AE(ae_title="PYGET")
    ae.acse_timeout = 30
    # After our own A-ABORT pynetdicom's C-GET generator waits for responses until these.
    ae.dimse_timeout = job.get("timeout", 60)
    ae.network_timeout = job.get("timeout", 60)
    model = PatientRootGet if job.get("model") == "P" else StudyRootGet
    ae.add_requested_context(model)
    roles = []
    for sop_class, syntaxes in job["contexts"]:
        ae.add_requested_context(sop_class, syntaxes)
        if job.get("roles", True) and sop_class not in [r.sop_class_uid for r in roles]:
            roles.append(build_role(sop_class, scp_role=True))
    received = []

    def on_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == job.get("cancel_after"):
            # The C-CANCEL goes out before this C-STORE-RSP: the SCP sees it while it waits
            # for the response, and stops after this sub-operation.
            cx = [c for c in event.assoc.accepted_contexts if c.abstract_syntax == model][0]
            event.assoc.send_c_cancel(1, cx.context_id)
        if len(received) == job.get("abort_after"):
            event.assoc.abort()
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        job["port"],
        ae_title=job.get("aec", "DICOM_GW"),
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        print(json.dumps({"error": "association failed"}))
        return
    ds = Dataset()
    for k, v in job["keys"].items():
        setattr(ds, k, v)
    out = {"pending": 0, "status": None, "failed_uids": []}
    for status, identifier in assoc.send_c_get(ds, model):
        if status is None or not status:
            out["error"] = "no response"
            break
        st = int(status.Status)
        if st in (0xFF00, 0xFF01):
            out["pending"] += 1
            continue
        out["status"] = "%04X" % st
        for name, key in [
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
            ("remaining", "NumberOfRemainingSuboperations"),
        ]:
            out[name] = int(getattr(status, key)) if key in status else None
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            v = identifier.FailedSOPInstanceUIDList
            out["failed_uids"] = [str(v)] if isinstance(v, str) else [str(x) for x in v]
    if assoc.is_established:
        assoc.release()
    out["received"] = received
    print(json.dumps(out))


def store_scp(job):
    ae = AE(ae_title=job.get("ae", "DEST"))
    classes = job.get("classes") or [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    for c in classes:
        ae.add_supported_context(c)
    count = [0]

    def on_store(event):
        count[0] += 1
        rq = event.request
        print(
            json.dumps(
                {
                    "sop": str(rq.AffectedSOPInstanceUID),
                    "originator_ae": str(rq.MoveOriginatorApplicationEntityTitle or "").strip(),
                    "originator_id": rq.MoveOriginatorMessageID,
                }
            ),
            flush=True,
        )
        if count[0] > job.get("hold_after", 1 << 30):
            time.sleep(job.get("hold_seconds", 0))
        return 0x0000

    serve(ae, job["port"], [(evt.EVT_C_STORE, on_store)])


def main():
    job = json.load(sys.stdin)
    if job["mode"] == "get":
        get(job)
    else:
        store_scp(job)


main()
