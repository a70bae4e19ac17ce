#!/usr/bin/python3
"""A policy milter for postrider's tests, on python3-milter (pymilter, libmilter inside):

  sender containing "tempfail"   -> 451 at MAIL
  recipient containing "blocked" -> 550 5.7.1 at RCPT
  every message                  -> X-Policy: checked added
  Subject containing "replace"   -> body replaced
  Subject containing "addrcpt"   -> recipient extra@dst.test added
  Subject containing "quarantine"-> quarantined
  Subject containing "reject"    -> 554 5.7.1 at end of message
  sender containing "discard"    -> DISCARD at MAIL
  recipient containing "discard" -> DISCARD at RCPT
  Subject containing "chghdr"    -> the first X-Edit header changed to "edited"

    policy_milter.py PORT
"""
import sys

import Milter


class Policy(Milter.Base):
    def __init__(self):
        self.subject = ""

    def envfrom(self, mailfrom, *params):
        self.subject = ""
        if "tempfail" in mailfrom:
            self.setreply("451", "4.7.1", "sender tempfailed by policy")
            return Milter.TEMPFAIL
        if "discard" in mailfrom:
            return Milter.DISCARD
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        if "blocked" in to:
            self.setreply("550", "5.7.1", "recipient blocked by policy")
            return Milter.REJECT
        if "discard" in to:
            return Milter.DISCARD
        return Milter.CONTINUE

    def header(self, name, value):
        if name.lower() == "subject":
            self.subject = value
        return Milter.CONTINUE

    def eom(self):
        if "reject" in self.subject:
            self.setreply("554", "5.7.1", "content rejected by policy")
            return Milter.REJECT
        self.addheader("X-Policy", "checked")
        if "replace" in self.subject:
            self.replacebody(b"replaced by the policy milter\r\n")
        if "addrcpt" in self.subject:
            self.addrcpt("<extra@dst.test>")
        if "chghdr" in self.subject:
            self.chgheader("X-Edit", 1, "edited")
        if "quarantine" in self.subject:
            self.quarantine("suspicious")
        return Milter.ACCEPT


def main():
    port = sys.argv[1]
    Milter.factory = Policy
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.QUARANTINE | Milter.CHGHDRS)
    Milter.runmilter("policy", f"inet:{port}@127.0.0.1", 30)


if __name__ == "__main__":
    main()
