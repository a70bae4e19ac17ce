//! Every kind reads back what it renders (property tests), and the reference's words for
//! a choice all parse.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::parse::parse_value;

/// Rendering `v` and reading the text back gives `v`.
fn round_trip<K: Kind>(v: &K::Value) -> Result<(), TestCaseError>
where
    K::Value: PartialEq + Debug,
{
    match K::render(v) {
        Some(text) => {
            let back = parse_value::<K>(&text, "k")
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&back, v, "via {}", text);
        }
        None => {
            let absent = K::absent();
            prop_assert_eq!(absent.as_ref(), Some(v));
        }
    }
    Ok(())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// Host names in the form the parser keeps them: lowercase, no final dot. Labels start
/// with a letter so that none reads as an IP address.
fn host() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,8}[a-z0-9])?){0,3}"
}

fn absolute_path() -> impl Strategy<Value = PathBuf> {
    "(/[a-zA-Z0-9._-]{1,8}){1,4}".prop_map(PathBuf::from)
}

fn duration() -> impl Strategy<Value = Duration> {
    (0u64..100_000_000_000).prop_map(Duration::from_millis)
}

/// The reference lists exactly the words the parser takes as canonical.
#[test]
fn listed_words_parse() {
    fn check<T: Words + std::str::FromStr>() {
        for w in T::WORDS {
            let v = w.parse::<T>().unwrap_or_else(|_| panic!("{w}"));
            assert_eq!(v.word(), *w);
        }
    }
    check::<TlsPolicy>();
    check::<MilterFailure>();
    check::<LogFormat>();
}

proptest! {
    #[test]
    fn strings(s in "\\PC{0,30}") {
        round_trip::<Str>(&s)?;
    }

    #[test]
    fn string_lists(v in prop::collection::vec("\\PC{0,10}", 0..4)) {
        round_trip::<Strings>(&v)?;
    }

    #[test]
    fn booleans(b in any::<bool>()) {
        round_trip::<Bool>(&b)?;
    }

    #[test]
    fn integers(
        n in 2usize..=10_000,
        r in 1usize..=65_535,
        c in 0usize..=1_000_000_000,
        e in 1u32..=1000,
        p in 1u16..,
    ) {
        round_trip::<Int<usize, 2, 10_000>>(&n)?;
        round_trip::<Int<usize, 1, 65_535>>(&r)?;
        round_trip::<Count<0>>(&c)?;
        round_trip::<Int<u32, 1, 1000>>(&e)?;
        round_trip::<Int<u16, 1, 65_535>>(&p)?;
    }

    #[test]
    fn sizes(n in any::<u64>(), m in 0u64..10_000, unit in 0u32..4) {
        round_trip::<Size>(&n)?;
        round_trip::<Size>(&(m << (10 * unit)))?;
        round_trip::<Size>(&(m * 1000u64.pow(unit)))?;
    }

    #[test]
    fn fractions(f in 0.0f64..=0.5) {
        round_trip::<Fraction<50>>(&f)?;
    }

    #[test]
    fn durations(d in duration(), steps in prop::collection::vec(duration(), 1..6)) {
        round_trip::<Dur>(&d)?;
        round_trip::<DurOrOff>(&Some(d).filter(|d| !d.is_zero()))?;
        round_trip::<Backoff>(&steps)?;
    }

    #[test]
    fn socket_addresses(
        a in socket_addr(),
        l in prop::collection::vec(socket_addr(), 1..4),
        n in prop::collection::vec(socket_addr(), 0..4),
    ) {
        round_trip::<Addr>(&a)?;
        round_trip::<Opt<Addr>>(&Some(a))?;
        round_trip::<Listen>(&l)?;
        round_trip::<Opt<Nameservers>>(&Some(n))?;
    }

    #[test]
    fn networks(v in prop::collection::vec((ip(), any::<u8>()), 0..4)) {
        let cidrs: Vec<Cidr> = v
            .into_iter()
            .map(|(ip, p)| Cidr::new(ip, p % if ip.is_ipv4() { 33 } else { 129 }).unwrap())
            .collect();
        round_trip::<Cidrs>(&cidrs)?;
        round_trip::<Opt<Cidrs>>(&Some(cidrs))?;
    }

    #[test]
    fn addresses(a in ip(), v in prop::collection::vec(ip(), 0..4)) {
        round_trip::<Ip>(&a)?;
        round_trip::<Opt<Ip>>(&None)?;
        round_trip::<Ips>(&v)?;
    }

    #[test]
    fn names(h in host(), v in prop::collection::vec(host(), 0..4)) {
        round_trip::<HostName>(&h)?;
        round_trip::<Domains>(&v)?;
    }

    #[test]
    fn paths(p in "[^\\x00]{1,30}", q in absolute_path()) {
        round_trip::<Path>(&PathBuf::from(p))?;
        round_trip::<Opt<Path>>(&Some(q))?;
        round_trip::<Opt<Path>>(&None)?;
    }

    #[test]
    fn words(t in 0usize..4, f in 0usize..3, l in 0usize..2, v in 0usize..5) {
        let tls = [TlsPolicy::None, TlsPolicy::Opportunistic, TlsPolicy::Required, TlsPolicy::Verify];
        round_trip::<Word<TlsPolicy>>(&tls[t])?;
        let failure = [MilterFailure::Tempfail, MilterFailure::Accept, MilterFailure::Reject];
        round_trip::<Word<MilterFailure>>(&failure[f])?;
        round_trip::<Word<LogFormat>>(&[LogFormat::Human, LogFormat::Json][l])?;
        round_trip::<LogLevel>(&["error", "warn", "info", "debug", "trace"][v].to_string())?;
    }

    #[test]
    fn lmtp_and_milter_addresses(
        a in socket_addr(),
        h in host(),
        port in 1u16..,
        path in absolute_path(),
    ) {
        round_trip::<Lmtp>(&LmtpTarget::Inet(a))?;
        round_trip::<Lmtp>(&LmtpTarget::Host { host: h, port })?;
        round_trip::<Opt<Lmtp>>(&Some(LmtpTarget::Unix(path.clone())))?;
        round_trip::<MilterAddr>(&MilterAddress::Inet(a))?;
        round_trip::<MilterAddr>(&MilterAddress::Unix(path))?;
    }
}
