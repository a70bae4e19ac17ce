//! Relay control: which recipients this server takes, decided from plain facts (the client's
//! trust, the recipient's domain and local part) so every trick can be tested without I/O.
//!
//! We never reinterpret `%`, `!` or a quoted `@` in a local part as routing, so they cannot
//! open the relay through us; but a later hop might, so from untrusted clients such local
//! parts are refused outright (as Postfix does with allow_untrusted_routing = no).

/// What the recipient's domain is, after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptDomain<'a> {
    /// A domain name, any case, maybe with a trailing dot, maybe UTF-8.
    Name(&'a str),
    /// `[192.0.2.1]` or `[IPv6:...]`: never local to us by name.
    Literal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// For one of our local domains (delivered over LMTP).
    Local,
    /// For elsewhere, and the client or the domain allows relaying.
    Relay,
    /// `554 5.7.1 Relay access denied`.
    Denied,
}

pub struct RelayPolicy<'a> {
    pub local_domains: &'a [String],
    pub relay_domains: &'a [String],
}

/// `Example.ORG.` and `example.org` are one domain; the same rule routing uses.
pub use config::normalize_domain;

fn listed(list: &[String], domain: &str) -> bool {
    list.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

impl RelayPolicy<'_> {
    pub fn decide(&self, local_part: &str, domain: RcptDomain<'_>, trusted: bool) -> Decision {
        let routing_trick = local_part.contains(['%', '!', '@']);
        let name = match domain {
            RcptDomain::Name(n) => normalize_domain(n),
            RcptDomain::Literal => {
                return if trusted {
                    Decision::Relay
                } else {
                    Decision::Denied
                };
            }
        };
        if listed(self.local_domains, &name) {
            if routing_trick && !trusted {
                return Decision::Denied;
            }
            return Decision::Local;
        }
        if trusted {
            return Decision::Relay;
        }
        if routing_trick {
            return Decision::Denied;
        }
        if listed(self.relay_domains, &name) {
            return Decision::Relay;
        }
        Decision::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> (Vec<String>, Vec<String>) {
        (
            vec!["example.org".into(), "kb.example".into()],
            vec!["partner.test".into()],
        )
    }

    #[test]
    fn relay_tricks_stay_closed() {
        let (local, relay) = policy();
        let p = RelayPolicy {
            local_domains: &local,
            relay_domains: &relay,
        };
        use Decision::*;
        use RcptDomain::*;
        let cases = [
            ("user", Name("example.org"), Local),
            ("user", Name("EXAMPLE.ORG."), Local),
            ("user", Name("partner.test"), Relay),
            ("user", Name("Partner.Test."), Relay),
            ("user", Name("victim.test"), Denied),
            ("user%victim.test", Name("example.org"), Denied),
            ("victim.test!user", Name("example.org"), Denied),
            ("user@victim.test", Name("example.org"), Denied), // quoted "@" in the local part
            ("user%victim.test", Name("partner.test"), Denied),
            ("user", Literal, Denied), // [127.0.0.1], ours or not
            ("user", Name("example.org.victim.test"), Denied),
            ("user", Name("xample.org"), Denied),
            ("user", Name("exämple.org"), Denied), // IDN lookalike
            ("user", Name("sub.example.org"), Denied),
            // Kelvin sign: Unicode lowercasing would make it "k", DNS and routing do not.
            ("user", Name("\u{212A}b.example"), Denied),
        ];
        for (lp, d, want) in cases {
            assert_eq!(p.decide(lp, d, false), want, "{lp} @ {d:?}");
        }
    }

    #[test]
    fn trusted_clients_relay_anywhere() {
        let (local, relay) = policy();
        let p = RelayPolicy {
            local_domains: &local,
            relay_domains: &relay,
        };
        assert_eq!(
            p.decide("u", RcptDomain::Name("victim.test"), true),
            Decision::Relay
        );
        assert_eq!(p.decide("u", RcptDomain::Literal, true), Decision::Relay);
        assert_eq!(
            p.decide("u", RcptDomain::Name("example.org"), true),
            Decision::Local
        );
    }
}
