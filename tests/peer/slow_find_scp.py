"""A Study Root C-FIND SCP that answers slowly, for tests/scu_find_deadline.rs (pynetdicom).

Reads a job as JSON on stdin: {"port": N, "ae": "SLOW", "interval": seconds, "responses": K}.
Every C-FIND gets up to K pending responses, one each `interval` seconds, then 0000. A
requestor calling with AE title "HONOUR" gets FE00 at the first C-CANCEL; any other calling
AE title is ignored: the pending responses go on as if no C-CANCEL had come (a peer that
ignores it). Prints "LISTENING" once it listens, then one line per event:
  CANCEL_SEEN <calling AE>   the handler saw the C-CANCEL
  RELEASED <calling AE>      the requestor released the association
  ABORTED <calling AE>       the requestor aborted it
"""

import json
import sys
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRoot
from serve import serve


def main():
    job = json.load(sys.stdin)
    interval = float(job.get("interval", 0.5))
    responses = int(job.get("responses", 1000))
    ae = AE(ae_title=job.get("ae", "SLOW"))
    ae.add_supported_context(StudyRoot)

    def calling(event):
        return event.assoc.requestor.ae_title.strip()

    def on_find(event):
        who = calling(event)
        seen = False
        for i in range(responses):
            # Wait in small steps so a C-CANCEL is seen while waiting.
            end = time.monotonic() + interval
            while time.monotonic() < end:
                if event.assoc.is_aborted or event.assoc.is_released:
                    return
                if event.is_cancelled and not seen:
                    seen = True
                    print(f"CANCEL_SEEN {who}", flush=True)
                    if who == "HONOUR":
                        yield 0xFE00, None
                        return
                time.sleep(0.02)
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1.{i + 1}"
            yield 0xFF00, ds
        yield 0x0000, None

    def on_released(event):
        print(f"RELEASED {calling(event)}", flush=True)

    def on_aborted(event):
        print(f"ABORTED {calling(event)}", flush=True)

    serve(
        ae,
        job["port"],
        [
            (evt.EVT_C_FIND, on_find),
            (evt.EVT_RELEASED, on_released),
            (evt.EVT_ABORTED, on_aborted),
        ],
    )


main()
