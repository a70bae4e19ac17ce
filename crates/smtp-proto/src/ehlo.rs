//! EHLO capabilities (RFC 5321 §4.1.1.1): what a server offers, parsed by the client from
//! the EHLO reply, and built by the server into one.

use crate::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    /// SIZE with its limit; `Some(0)` means no fixed limit was given.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
    pub chunking: bool,
    pub binarymime: bool,
    pub enhancedstatuscodes: bool,
    pub auth: Vec<String>,
    /// Keywords we do not act on, kept for logs.
    pub other: Vec<String>,
}

impl Capabilities {
    /// Reads the lines after the first (the greeting name) of an EHLO/LHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eightbitmime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "CHUNKING" => c.chunking = true,
                "BINARYMIME" => c.binarymime = true,
                "ENHANCEDSTATUSCODES" => c.enhancedstatuscodes = true,
                "AUTH" => c.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => c.other.push(line.clone()),
            }
        }
        c
    }

    /// The server's EHLO reply: `250-hostname` then one keyword per line.
    pub fn to_reply(&self, hostname: &str) -> Reply {
        let mut lines = vec![hostname.to_owned()];
        if self.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(n) = self.size {
            lines.push(format!("SIZE {n}"));
        }
        for (on, kw) in [
            (self.eightbitmime, "8BITMIME"),
            (self.enhancedstatuscodes, "ENHANCEDSTATUSCODES"),
            (self.smtputf8, "SMTPUTF8"),
            (self.dsn, "DSN"),
            (self.chunking, "CHUNKING"),
            (self.binarymime, "BINARYMIME"),
            (self.starttls, "STARTTLS"),
        ] {
            if on {
                lines.push(kw.into());
            }
        }
        if !self.auth.is_empty() {
            lines.push(format!("AUTH {}", self.auth.join(" ")));
        }
        Reply::multi(250, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ReplyParser;

    #[test]
    fn round_trip_through_the_wire() {
        let caps = Capabilities {
            pipelining: true,
            size: Some(52_428_800),
            eightbitmime: true,
            smtputf8: true,
            dsn: true,
            starttls: true,
            chunking: true,
            binarymime: true,
            enhancedstatuscodes: true,
            auth: vec!["PLAIN".into()],
            other: vec![],
        };
        let mut p = ReplyParser::new();
        p.push(&caps.to_reply("mx.example").to_bytes());
        let reply = p.next_reply().unwrap().unwrap();
        assert_eq!(Capabilities::from_ehlo(&reply), caps);
    }

    #[test]
    fn reads_postfix_style_ehlo() {
        let mut p = ReplyParser::new();
        p.push(b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE\r\n250-VRFY\r\n250-ETRN\r\n250-8BITMIME\r\n250 DSN\r\n");
        let c = Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap());
        assert!(c.pipelining && c.eightbitmime && c.dsn && !c.starttls);
        assert_eq!(c.size, Some(0));
        assert_eq!(c.other, ["VRFY", "ETRN"]);
    }
}
