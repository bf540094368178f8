"""An MPPS SCU for the tests (pynetdicom): one N-CREATE or N-SET per run, the response as JSON.

Usage: mpps_scu.py PORT create|create-completed|set UID [KEY=VALUE ...]
  create            N-CREATE IN PROGRESS linked to the worklist item named by the keys
                    study=, accession=, rp_id=, sps_id=, patient_id=, patient_name=
  create-completed  the same N-CREATE but with status COMPLETED (invalid at creation)
  set               N-SET with status=COMPLETED|DISCONTINUED|IN PROGRESS (and end times)
Prints {"status": int, "comment": str|null, "error_id": int|null, "attributes": [..]}.
Exit 0 when a response arrived (whatever its status), 3 when the association failed.
"""

import json
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep


def create_dataset(keys, status):
    step = Dataset()
    step.StudyInstanceUID = keys.get("study", "")
    step.AccessionNumber = keys.get("accession", "")
    step.RequestedProcedureID = keys.get("rp_id", "")
    step.ScheduledProcedureStepID = keys.get("sps_id", "")
    step.ReferencedStudySequence = []
    step.RequestedProcedureDescription = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProtocolCodeSequence = []
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName = keys.get("patient_name", "")
    ds.PatientID = keys.get("patient_id", "")
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS-" + keys.get("sps_id", "1")
    ds.PerformedStationAETitle = "MODALITY1"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261122"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "test exam"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def set_dataset(keys):
    ds = Dataset()
    ds.PerformedProcedureStepStatus = keys["status"]
    if keys["status"] != "IN PROGRESS":
        ds.PerformedProcedureStepEndDate = "20261122"
        ds.PerformedProcedureStepEndTime = "103000"
    ds.PerformedSeriesSequence = []
    return ds


def main():
    port, action, uid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    keys = dict(arg.split("=", 1) for arg in sys.argv[4:])
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_GW")
    if not assoc.is_established:
        print(json.dumps({"error": "association not established"}))
        return 3
    if action == "create":
        status, _ = assoc.send_n_create(
            create_dataset(keys, "IN PROGRESS"), ModalityPerformedProcedureStep, uid
        )
    elif action == "create-completed":
        status, _ = assoc.send_n_create(
            create_dataset(keys, "COMPLETED"), ModalityPerformedProcedureStep, uid
        )
    elif action == "set":
        status, _ = assoc.send_n_set(
            set_dataset(keys), ModalityPerformedProcedureStep, uid
        )
    else:
        raise SystemExit(f"unknown action {action}")
    assoc.release()
    if not status:
        print(json.dumps({"error": "no response"}))
        return 3
    out = {
        "status": int(status.Status),
        "comment": str(status.ErrorComment) if "ErrorComment" in status else None,
        "error_id": int(status.ErrorID) if "ErrorID" in status else None,
        "attributes": [
            f"{int(t):08X}" for t in (status.get("AttributeIdentifierList") or [])
        ]
        if "AttributeIdentifierList" in status
        else [],
        "affected_uid": str(status.AffectedSOPInstanceUID)
        if "AffectedSOPInstanceUID" in status
        else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
