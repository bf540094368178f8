"""What the SCP scripts in tests/peer/ share: serve until killed, saying when ready."""

import time


def serve(ae, port, handlers):
    """Listens on 127.0.0.1:`port` with `handlers`, prints "LISTENING" (the test waits for
    it), and serves until the test kills the process."""
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    print("LISTENING", flush=True)
    try:
        while True:
            time.sleep(1)
    finally:
        server.shutdown()
