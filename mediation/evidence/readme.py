"""The README.txt of an export bundle: how to check it, in plain words.

The commands in it are run by the tests (tests/test_export.py), exactly as
written here, so they stay true.
"""

from __future__ import annotations

from typing import Any

# The commands a reader runs from inside the bundle directory. Kept apart
# so the tests run exactly these lines.
SUMS_CHECK = "sha256sum -c SHA256SUMS"
SIG_CHECK = (
    "openssl pkeyutl -verify -pubin -inkey log-signing.pub.pem -rawin "
    "-in SHA256SUMS -sigfile SHA256SUMS.sig"
)


def checkpoint_commands(handle: str, line: int = 1) -> list[str]:
    """Commands that check the signature of checkpoint ``line`` of checkpoints.txt."""
    pick = f"sed -n {line}p {handle}/checkpoints.txt"
    return [
        f"{pick} | cut -d' ' -f5 | base64 -d > /tmp/checkpoint.msg",
        f"{pick} | cut -d' ' -f6 | base64 -d > /tmp/checkpoint.sig",
        "openssl pkeyutl -verify -pubin -inkey log-signing.pub.pem -rawin "
        "-in /tmp/checkpoint.msg -sigfile /tmp/checkpoint.sig",
    ]


def _extras(summary: dict[str, Any]) -> str:
    """The lines for capture files and the confirmation record, when the bundle has them."""
    lines = [
        f"  {name + '/':<22}capture files written on the server, with"
        "\n                        their signed manifest.jsonl and .sha256 files"
        for name in summary.get("capture_dirs", [])
    ]
    if summary.get("confirmation"):
        lines.append("  confirmation.json     whom the intercept followed, and how it knew")
    return "".join(line + "\n" for line in lines)


def readme_text(handle: str, summary: dict[str, Any]) -> str:
    """The README for a bundle of ``handle`` described by ``summary`` (bundle.json)."""
    streams = []
    for name, span in summary["streams"].items():
        held = "nothing" if span["first"] is None else f"records {span['first']}..{span['last']}"
        gaps = "; ".join(f"{g['first']}..{g['last']} {g['why']}" for g in span["gaps"])
        streams.append(f"  {name}: {held}" + (f" (not held: {gaps})" if gaps else ""))
    cp = "\n".join(f"    {c}" for c in checkpoint_commands(handle))
    return f"""\
EVIDENCE EXPORT OF WARRANT {handle}

This directory is evidence. It holds case data (the intercepted content
and identities inside the PDUs). Handle, store and send it as evidence,
under the rules for this case.

What is here
  README.txt            this file
  bundle.json           what was exported: time window, sequence ranges, gaps
  log-signing.pub.pem   the mediation server's public signing key (Ed25519)
  audit.jsonl           who did what with this warrant on the server
  {handle}/cmii.raw, {handle}/cmcc.raw
                        every record of the warrant's streams, decrypted, as
                        the delivery envelopes (DER) the agency receives
  {handle}/checkpoints.raw, {handle}/checkpoints.txt
                        the server's signed checkpoints over those records
  {handle}/cmcc.pcap    the intercepted packets (open with Wireshark, tcpdump)
  {handle}/cmii.jsonl   the call-identifying PDUs and completeness notices
  {handle}/notices.jsonl
                        the completeness notices alone (what the server knew
                        it had missed, and when)
  log/{handle}/cmii/, log/{handle}/cmcc/
                        the same records and checkpoints in the evidence log's
                        own format, decrypted (docs/evidence-log.md, "Formats")
{_extras(summary)}  SHA256SUMS            a SHA-256 hash of every file
  SHA256SUMS.sig        the server's signature of SHA256SUMS

Streams
{chr(10).join(streams)}

The public key must come from your own trusted copy (the one the carrier
gave the agency with the warrant's delivery details), not only from this
directory: anyone who altered the evidence could also replace the key here.
Compare it with your copy, or give your copy to `mediate verify --key`.

1. Every file is the one exported (from inside this directory):

    {SUMS_CHECK}

   and the list of hashes is the server's (prints "Signature Verified
   Successfully"):

    {SIG_CHECK}

2. A checkpoint's signature (each line of checkpoints.txt is: stream, last
   sequence number covered, time, chain value, the signed message and the
   signature, both base64; this checks the first line):

{cp}

   The signed message is "mediation-log-checkpoint-v1", a zero byte, the
   stream, the last sequence number, the time and the chain value: the
   SHA-256 hash chain over every record up to it. How the chain is built is
   in the server's documentation (docs/evidence-log.md, "The hash chain").

3. The packets: `tcpdump -nn -r {handle}/cmcc.pcap` or open the file in
   Wireshark. Each packet carries its capture time.

4. The hash chain of the log segments, by the log's own checker (for a
   whole stream; an export of a time window starts after a checkpoint, and
   this command then reports the records before it as missing):

    mediate log verify log --public-key YOUR-COPY-OF-THE-KEY.pem

5. All of it at once, hash chain included:

    mediate verify . --key YOUR-COPY-OF-THE-KEY.pem

   It checks every hash, signature and chain link and the sequence
   coverage, prints a verdict per file and a summary, and exits 0 when the
   bundle is complete, 3 when it is sound but has gaps (listed), 1 when
   something was altered (naming the file and record).
"""
