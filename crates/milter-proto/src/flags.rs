//! The two bit sets option negotiation trades: the actions the MTA allows (`SMFIF_*`) and the
//! protocol steps a milter may skip or leave unanswered (`SMFIP_*`), named as in libmilter's
//! mfdef.h. On the wire each is a 32-bit big-endian word, and bits this side has no name for
//! are kept as they came: a newer milter may offer more, and we only ever keep what both
//! sides name.

use std::fmt;
use std::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign};

macro_rules! flags {
    (
        $(#[$meta:meta])*
        $name:ident { $($flag:ident = $bit:expr,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(u32);

        impl $name {
            $(pub const $flag: Self = Self($bit);)*

            const NAMED: &[(&str, Self)] = &[$((stringify!($flag), Self::$flag),)*];

            pub const fn empty() -> Self {
                Self(0)
            }

            /// Every flag with a name.
            pub const fn all() -> Self {
                Self(0 $(| $bit)*)
            }

            /// The wire word, unknown bits included.
            pub const fn from_bits_retain(bits: u32) -> Self {
                Self(bits)
            }

            pub const fn bits(self) -> u32 {
                self.0
            }

            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// Every flag of `other` is set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Some flag of `other` is set.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }

            pub const fn intersection(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }
        }

        impl BitOr for $name {
            type Output = Self;
            fn bitor(self, other: Self) -> Self {
                self.union(other)
            }
        }

        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, other: Self) {
                *self = self.union(other);
            }
        }

        impl BitAnd for $name {
            type Output = Self;
            fn bitand(self, other: Self) -> Self {
                self.intersection(other)
            }
        }

        impl BitAndAssign for $name {
            fn bitand_assign(&mut self, other: Self) {
                *self = self.intersection(other);
            }
        }

        /// `NAME(A | B | 0x800000)`: the named flags, then any bits without a name.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                let mut rest = self.0;
                let mut sep = "";
                for (name, flag) in Self::NAMED {
                    if self.contains(*flag) {
                        write!(f, "{sep}{name}")?;
                        rest &= !flag.0;
                        sep = " | ";
                    }
                }
                if rest != 0 {
                    write!(f, "{sep}{rest:#x}")?;
                }
                write!(f, ")")
            }
        }
    };
}

flags! {
    /// What the MTA lets a milter change (`SMFIF_*`).
    Actions {
        ADDHDRS = 0x01,
        CHGBODY = 0x02,
        ADDRCPT = 0x04,
        DELRCPT = 0x08,
        CHGHDRS = 0x10,
        QUARANTINE = 0x20,
        CHGFROM = 0x40,
        ADDRCPT_PAR = 0x80,
        SETSYMLIST = 0x100,
    }
}

flags! {
    /// Protocol steps: `NO*` a milter does not want to be called for, `NR_*` it will not
    /// answer, and a few protocol features (`SMFIP_*`).
    Steps {
        NOCONNECT = 0x01,
        NOHELO = 0x02,
        NOMAIL = 0x04,
        NORCPT = 0x08,
        NOBODY = 0x10,
        NOHDRS = 0x20,
        NOEOH = 0x40,
        NR_HDR = 0x80,
        NOUNKNOWN = 0x100,
        NODATA = 0x200,
        SKIP = 0x400,
        RCPT_REJ = 0x800,
        NR_CONN = 0x1000,
        NR_HELO = 0x2000,
        NR_MAIL = 0x4000,
        NR_RCPT = 0x8000,
        NR_DATA = 0x10000,
        NR_UNKN = 0x20000,
        NR_EOH = 0x40000,
        NR_BODY = 0x80000,
        HDR_LEADSPC = 0x100000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bits_are_mfdef_h() {
        // The values libmilter puts on the wire; a typo here would misnegotiate silently.
        assert_eq!(Actions::all().bits(), 0x1ff);
        assert_eq!(Steps::all().bits(), 0x1f_ffff);
        assert_eq!(Actions::CHGFROM.bits(), 0x40);
        assert_eq!(Steps::SKIP.bits(), 0x400);
        assert_eq!(Steps::NR_BODY.bits(), 0x8_0000);
        assert_eq!(Steps::HDR_LEADSPC.bits(), 0x10_0000);
    }

    #[test]
    fn contains_intersects_and_unknown_bits() {
        let s = Steps::NOHELO | Steps::NR_HDR;
        assert!(s.contains(Steps::NOHELO));
        assert!(!s.contains(Steps::NOHELO | Steps::NOMAIL));
        assert!(s.intersects(Steps::NOHELO | Steps::NOMAIL));
        assert!(!s.intersects(Steps::NOMAIL));
        assert!((s & Steps::NOMAIL).is_empty());
        let newer = Steps::from_bits_retain(0x8000_0002);
        assert_eq!(newer.bits(), 0x8000_0002, "unknown bits are kept");
        assert_eq!(newer & Steps::all(), Steps::NOHELO);
        assert_eq!(format!("{newer:?}"), "Steps(NOHELO | 0x80000000)");
        assert_eq!(format!("{:?}", Actions::empty()), "Actions()");
        let mut a = Actions::ADDHDRS;
        a |= Actions::CHGBODY;
        a &= Actions::CHGBODY | Actions::CHGFROM;
        assert_eq!(a, Actions::CHGBODY);
    }
}
