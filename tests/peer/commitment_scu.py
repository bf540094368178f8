"""A Storage Commitment Push Model SCU for the tests (pynetdicom): one N-ACTION, then the
N-EVENT-REPORT(s) wherever they arrive, as JSON.

Usage: commitment_scu.py PORT [options] --tx UID --ref CLASS:INSTANCE [--ref ...]
  --ae AE            our AE title (default MODALITY1); the daemon reports to it
  --called AE        the daemon's AE title (default DICOM_GW)
  --listen P         also listen on 127.0.0.1:P for a report on a new association
  --default-roles    the listener accepts the Storage Commitment context with default roles
                     (no SCP/SCU role selection answered)
  --release          release the association right after the N-ACTION-RSP
  --expect N         reports to wait for (default 1; 0: none)
  --wait S           longest wait for them, seconds (default 30)
  --malformed KIND   first send a bad N-ACTION (no-tx, bad-uid, no-seq, action-2) and
                     record its status, then C-ECHO on the same association
Prints a JSON line {"action": {...}} as soon as the N-ACTION-RSP arrives, and at the end
{"action": {...}, "malformed": {...}|null, "echo_after": int|null, "reports": [...]}: each
report with "via" (same|new), "calling_ae", "event_type", "transaction", "committed",
"failed" ([class, instance, reason]) and "retrieve_ae". Exit 0 when the N-ACTION was answered
(whatever its status), 3 when the association failed.
"""

import argparse
import json
import sys
import threading
import time

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

WELL_KNOWN = "1.2.840.10008.1.20.1.1"

reports = []
answered = [0]
lock = threading.Lock()
# Set once the N-EVENT-REPORT-RSPs of the expected reports are on the wire: releasing before
# that makes pynetdicom send a P-DATA during its own release (it crashes: Evt9 in Sta7).
# EVT_DIMSE_SENT fires before the message is queued, so the P-DATA-TF sent after the last
# response was built is what counts (EVT_PDU_SENT fires after the socket write).
arrived = threading.Event()


def on_report(event, via):
    req = event.request
    info = event.event_information
    rep = {
        "via": via,
        "calling_ae": event.assoc.requestor.ae_title.strip()
        if isinstance(event.assoc.requestor.ae_title, str)
        else event.assoc.requestor.ae_title.decode().strip(),
        "event_type": req.EventTypeID,
        "transaction": str(info.get("TransactionUID", "")),
        "retrieve_ae": str(info.get("RetrieveAETitle", "")),
        "committed": [
            [str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
            for i in info.get("ReferencedSOPSequence", [])
        ],
        "failed": [
            [
                str(i.ReferencedSOPClassUID),
                str(i.ReferencedSOPInstanceUID),
                int(i.FailureReason),
            ]
            for i in info.get("FailedSOPSequence", [])
        ],
    }
    with lock:
        reports.append(rep)
    return 0x0000, None


def on_dimse_sent(event):
    if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
        with lock:
            answered[0] += 1


def on_pdu_sent(event):
    if type(event.pdu).__name__ != "P_DATA_TF":
        return
    with lock:
        if answered[0] >= args.expect:
            arrived.set()


def action_dataset(kind=None):
    ds = Dataset()
    if kind != "no-tx":
        ds.TransactionUID = "1.2.3..4" if kind == "bad-uid" else args.tx
    if kind != "no-seq":
        items = []
        for r in args.ref:
            cls, inst = r.split(":", 1)
            item = Dataset()
            item.ReferencedSOPClassUID = cls
            item.ReferencedSOPInstanceUID = inst
            items.append(item)
        ds.ReferencedSOPSequence = items
    return ds


def quiet_reactor(assoc):
    """Parks pynetdicom's reactor before a request. pynetdicom 2.1.1 pauses it inside each
    send_*() by clearing an event and polling a flag that the reactor also sets just *before*
    it waits, so a reactor passing by can still take the response off the queue ("Received
    unexpected C-ECHO service message") and the request times out after 30 s. Clearing the
    event early and giving the reactor a few of its 1 ms turns to park closes that window.
    """
    assoc._reactor_checkpoint.clear()
    time.sleep(0.05)


def answer(status):
    if status is None or "Status" not in status:
        return None
    return {
        "status": int(status.Status),
        "comment": str(status.get("ErrorComment", "")) or None,
    }


p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--ae", default="MODALITY1")
p.add_argument("--called", default="DICOM_GW")
p.add_argument("--tx", required=True)
p.add_argument("--ref", action="append", default=[])
p.add_argument("--listen", type=int)
p.add_argument("--default-roles", action="store_true")
p.add_argument("--release", action="store_true")
p.add_argument("--expect", type=int, default=1)
p.add_argument("--wait", type=float, default=30)
p.add_argument("--malformed")
args = p.parse_args()

ae = AE(ae_title=args.ae)
ae.acse_timeout = 30
ae.dimse_timeout = 30
ae.network_timeout = 60
ts = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
ae.add_requested_context(StorageCommitmentPushModel, ts)
ae.add_requested_context(Verification)
server = None
if args.listen:
    if args.default_roles:
        ae.add_supported_context(StorageCommitmentPushModel, ts)
    else:
        ae.add_supported_context(
            StorageCommitmentPushModel, ts, scu_role=False, scp_role=True
        )
    server = ae.start_server(
        ("127.0.0.1", args.listen),
        block=False,
        evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, lambda e: on_report(e, "new")),
            (evt.EVT_DIMSE_SENT, on_dimse_sent),
            (evt.EVT_PDU_SENT, on_pdu_sent),
        ],
    )

assoc = ae.associate(
    "127.0.0.1",
    args.port,
    ae_title=args.called,
    evt_handlers=[
        (evt.EVT_N_EVENT_REPORT, lambda e: on_report(e, "same")),
        (evt.EVT_DIMSE_SENT, on_dimse_sent),
        (evt.EVT_PDU_SENT, on_pdu_sent),
    ],
)
if not assoc.is_established:
    print(json.dumps({"error": "association failed"}))
    if server:
        server.shutdown()
    sys.exit(3)

out = {"action": None, "malformed": None, "echo_after": None, "reports": reports}
if args.malformed:
    kind = args.malformed
    action_type = 2 if kind == "action-2" else 1
    quiet_reactor(assoc)
    status, _ = assoc.send_n_action(
        action_dataset(kind), action_type, StorageCommitmentPushModel, WELL_KNOWN
    )
    out["malformed"] = answer(status)
    quiet_reactor(assoc)
    echo = assoc.send_c_echo()
    out["echo_after"] = int(echo.Status) if echo and "Status" in echo else None

quiet_reactor(assoc)
status, _ = assoc.send_n_action(
    action_dataset(), 1, StorageCommitmentPushModel, WELL_KNOWN
)
out["action"] = answer(status)
print(json.dumps({"action": out["action"]}), flush=True)
if args.release and assoc.is_established:
    assoc.release()
if args.expect > 0:
    arrived.wait(args.wait)
if assoc.is_established:
    assoc.release()
if server:
    # Let a report association finish its release before the listener goes.
    time.sleep(0.2)
    server.shutdown()
with lock:
    print(json.dumps(out), flush=True)
sys.exit(0 if out["action"] is not None else 3)
