#!/usr/bin/python3
"""Parses a DSN (RFC 3464/6522) with Python's email package and prints its fields as JSON,
so the Rust tests check what a real parser sees, not what our composer meant to write.

    dsncheck.py FILE.eml
"""
import email
import email.policy
import json
import sys


def fields(block):
    out = {}
    for k, v in block.items():
        out[k.lower()] = str(v)
    return out


def main():
    with open(sys.argv[1], "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    res = {
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "from": str(msg["From"]),
        "to": str(msg["To"]),
        "subject": str(msg["Subject"]),
        "auto_submitted": str(msg["Auto-Submitted"]),
        "defects": [type(d).__name__ for d in msg.defects],
    }
    parts = msg.get_payload() if msg.is_multipart() else []
    res["part_types"] = [p.get_content_type() for p in parts]
    if parts:
        res["human"] = parts[0].get_content()
    for p in parts[1:]:
        ct = p.get_content_type()
        if ct == "message/delivery-status":
            blocks = p.get_payload()
            res["per_message"] = fields(blocks[0])
            res["recipients"] = [fields(b) for b in blocks[1:]]
        elif ct in ("message/rfc822", "text/rfc822-headers", "message/global", "text/global-headers"):
            res["returned_type"] = ct
            payload = p.get_payload()
            if isinstance(payload, list):
                res["returned"] = payload[0].as_string()
            else:
                res["returned"] = str(payload)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
