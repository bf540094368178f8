#!/usr/bin/env python3
"""Writes seed inputs for the dataset, identifier, association and JSON fuzz targets into
fuzz/corpus/<target>/ (git-ignored): datasets taken from the shared DICOM samples (meta group
stripped, first byte choosing the transfer syntax as each target expects), a hand-made
A-ASSOCIATE-RQ, and a DICOM JSON worklist item. Nothing generated is committed.

    python3 fuzz/seed.py [samples-dir]
"""
import os
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
samples = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared", "dicom-samples")

# Target-specific first byte for (implicit LE, explicit LE, explicit BE).
TS_BYTE = {
    "1.2.840.10008.1.2": 0,
    "1.2.840.10008.1.2.1": 1,
    "1.2.840.10008.1.2.2": 2,
}


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def part10(b):
    if b[128:132] != b"DICM":
        return None
    gl = struct.unpack("<I", b[140:144])[0]
    end = 144 + gl
    o, ts = 132, None
    while o < end:
        g, e = struct.unpack("<HH", b[o:o + 4])
        vr = b[o + 4:o + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            n, h = struct.unpack("<I", b[o + 8:o + 12])[0], 12
        else:
            n, h = struct.unpack("<H", b[o + 6:o + 8])[0], 8
        if (g, e) == (2, 0x10):
            ts = b[o + h:o + h + n].rstrip(b"\0 ").decode()
        o += h + n
    return ts, b[end:]


def el(g, e, vr, v):
    if len(v) % 2:
        v += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH", g, e) + vr + struct.pack("<H", len(v)) + v


def sq(g, e, items):
    out = struct.pack("<HH", g, e) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    for it in items:
        out += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + it + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return out + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


# A C-FIND MWL identifier and an MPPS N-CREATE dataset in Explicit VR LE.
identifier = (el(0x0008, 0x0005, b"CS", b"ISO_IR 100") + el(0x0008, 0x0050, b"SH", b"")
              + el(0x0010, 0x0010, b"PN", b"Doe*") + el(0x0010, 0x0020, b"LO", b"")
              + el(0x0010, 0x0030, b"DA", b"19600101-19800101")
              + sq(0x0040, 0x0100, [el(0x0008, 0x0060, b"CS", b"CT") + el(0x0040, 0x0001, b"AE", b"CT01")
                                    + el(0x0040, 0x0002, b"DA", b"20261122-") + el(0x0040, 0x0003, b"TM", b"")
                                    + el(0x0040, 0x0020, b"CS", b"")]))
mpps = (el(0x0008, 0x0060, b"CS", b"CT") + el(0x0010, 0x0010, b"PN", b"Doe^Jane")
        + el(0x0010, 0x0020, b"LO", b"P1") + el(0x0040, 0x0241, b"AE", b"CT01")
        + el(0x0040, 0x0244, b"DA", b"20261122") + el(0x0040, 0x0245, b"TM", b"101500")
        + el(0x0040, 0x0252, b"CS", b"IN PROGRESS") + el(0x0040, 0x0253, b"SH", b"PPS1")
        + sq(0x0040, 0x0270, [el(0x0008, 0x0050, b"SH", b"ACC1") + el(0x0020, 0x000D, b"UI", b"1.2.3.4")
                              + el(0x0040, 0x0009, b"SH", b"SPS1")]))
# A Storage Commitment N-ACTION-RQ dataset: Transaction UID and two references.
commitment = (el(0x0008, 0x1195, b"UI", b"1.2.3.99")
              + sq(0x0008, 0x1199, [el(0x0008, 0x1150, b"UI", b"1.2.840.10008.5.1.4.1.1.2")
                                    + el(0x0008, 0x1155, b"UI", b"1.2.3.4.%d" % i) for i in (1, 2)]))
put("n_action_dataset", "commitment", bytes([1]) + commitment)
for t in ("mwl_identifier", "mpps_dataset", "dataset_scan"):
    put(t, "identifier", bytes([1]) + (bytes([0]) if t == "dataset_scan" else b"") + identifier)
    put(t, "mpps", bytes([1]) + (bytes([0]) if t == "dataset_scan" else b"") + mpps)

if os.path.isdir(samples):
    for name in sorted(os.listdir(samples)):
        if not name.endswith(".dcm"):
            continue
        got = part10(open(os.path.join(samples, name), "rb").read())
        if not got or got[0] not in TS_BYTE:
            continue
        ts, ds = got
        # The scanner target's mode byte: bits 0-1 the encoding; its second byte a chunk seed.
        put("dataset_scan", name, bytes([TS_BYTE[ts], 7]) + ds)
        if len(ds) < 16384:
            put("mwl_identifier", name, bytes([TS_BYTE[ts]]) + ds)
            put("mpps_dataset", name, bytes([TS_BYTE[ts]]) + ds)
            put("n_action_dataset", name, bytes([TS_BYTE[ts]]) + ds)


def item(t, body):
    return struct.pack(">BBH", t, 0, len(body)) + body


def assoc_rq():
    ts_items = item(0x40, b"1.2.840.10008.1.2.1") + item(0x40, b"1.2.840.10008.1.2")
    pcs = b""
    for i, a in enumerate([b"1.2.840.10008.5.1.4.31", b"1.2.840.10008.3.1.2.3.3", b"1.2.840.10008.1.1"]):
        pcs += item(0x20, bytes([2 * i + 1, 0, 0, 0]) + item(0x30, a) + ts_items)
    user = (item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4.5") + item(0x55, b"FUZZ_1")
            + item(0x53, struct.pack(">HH", 1, 1))
            + item(0x54, struct.pack(">H", 22) + b"1.2.840.10008.5.1.4.31" + b"\x01\x00")
            + item(0x56, struct.pack(">H", 22) + b"1.2.840.10008.5.1.4.31" + b"\x01\x01"))
    body = (struct.pack(">HH", 1, 0) + b"DICOM_GW".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + pcs + item(0x50, user))
    return struct.pack(">BBI", 1, 0, len(body)) + body


put("association_rq", "rq", bytes([0]) + assoc_rq())
put("association_rq", "rq_strict", bytes([1]) + assoc_rq())

json_item = b"""[{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane", "Ideographic": "X"}]},
 "00100020": {"vr": "LO", "Value": ["P1"]}, "00100030": {"vr": "DA", "Value": ["19700101"]},
 "00101020": {"vr": "DS", "Value": [1.75]}, "00101030": {"vr": "DS", "Value": ["72.5"]},
 "00201208": {"vr": "IS", "Value": [3]}, "00280010": {"vr": "US", "Value": [512]},
 "00080050": {"vr": "SH", "Value": ["ACC1"]}, "0020000d": {"vr": "UI", "Value": ["1.2.3.4"]},
 "00400100": {"vr": "SQ", "Value": [{"00080060": {"vr": "CS", "Value": ["CT"]},
   "00400001": {"vr": "AE", "Value": ["CT01"]}, "00400002": {"vr": "DA", "Value": ["20261122"]},
   "00400003": {"vr": "TM", "Value": ["101500"]}, "00400009": {"vr": "SH", "Value": ["SPS1"]},
   "00400020": {"vr": "CS", "Value": ["SCHEDULED"]}, "00400007": {"vr": "LO", "Value": [null]}}]}}]"""
put("dicom_json", "item", json_item)


# The journal's format (src/store/journal/format.rs): CRC32C (Castagnoli, reflected).
_CRC = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _CRC.append(c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def journal_group(epoch, first_seq, prev, records):
    """One group (header, records, zero padding to 4 KiB); returns (bytes, its link)."""
    body, body_crc = b"", 0
    for i, (flags, meta, header, dataset) in enumerate(records):
        h = (b"DGJR" + bytes([1, 0]) + struct.pack("<HQIII", flags, first_seq + i, epoch, len(meta), len(header))
             + struct.pack("<IQI", 0, len(dataset), 0))
        crc = crc32c(meta + header + dataset, crc32c(h))
        body += h + struct.pack("<I", crc) + meta + header + dataset
        body_crc = crc32c(struct.pack("<I", crc), body_crc)
    h = (b"DGJG" + bytes([1, 0]) + struct.pack("<HIIQQII", 0, epoch, len(records), first_seq, len(body), prev, body_crc)
         + bytes(20))
    link = crc32c(h)
    g = h + struct.pack("<I", link) + body
    return g + bytes(-len(g) % 4096), link


recs = [(0, b"meta", bytes(132) + b"DICM", bytes(range(256)) * 8), (3, b"", b"", b"")]
# Mode 0: expectation (seq 1, epoch_min 1, link 5 whose low byte widens the epochs to 1..6).
g1, l1 = journal_group(1, 1, 5, recs)
g2, _ = journal_group(2, 3, l1, recs[:1])
put("journal_scan", "chain", bytes([0]) + struct.pack("<QII", 1, 1, 5) + g1 + g2)
# Mode 2: the checkpoint (seq 7, link 9) and a ring of epoch 0.
g1, l1 = journal_group(0, 7, 9, recs)
g2, _ = journal_group(0, 9, l1, recs[1:] * 3)
put("journal_scan", "replay", bytes([2]) + struct.pack("<QI", 7, 9) + g1 + g2)
put("journal_scan", "damage", bytes([1, 5, 0x41, 7]) + bytes(range(200)))
print("seeds written under", os.path.join(here, "corpus"))
