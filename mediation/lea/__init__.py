"""The agency's side: ``mediate receive`` (guide: docs/agency.md).

Receives a warrant's streams over UDP and/or TLS, fetches what it missed
from the server's log, and writes per warrant handle the evidence files
(raw envelopes, a pcap of the CC packets, the CmII as JSON lines, a gap
report, a SHA-256 for each). The protocol itself lives in
``mediation.protocol``; this package is the trio loops and the files.

Modules::

    receiver   Receiver, ReceiverConfig: the nursery of one run
    udp        UDP listener and receiver reports
    scte       SCTE CC datagrams (--format scte): CCC id -> handle, tags, gaps
    driver     StreamDriver: one TLS connection (live or retrieval)
    retrieve   Retriever (gaps, by itself), fetch (explicit ranges)
    state      ReceiverState: shared trackers, counters, outputs
    outputs    CaseOutputs: the files of one warrant handle
    report     per-stream counters and gaps.json
    files      hashed append-only files, torn-tail repair
    rawfile    reading back the raw envelope files
    verify_scte  re-checking the tags of kept SCTE datagrams
    tls        agency certificate, TLS contexts, fingerprint pinning
    view       live view and the summary at exit
"""
