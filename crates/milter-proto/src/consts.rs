//! The protocol's numbers, named as in libmilter's mfdef.h.

pub const SMFI_PROT_VERSION: u32 = 6;

// MTA -> milter commands.
pub const SMFIC_ABORT: u8 = b'A';
pub const SMFIC_BODY: u8 = b'B';
pub const SMFIC_CONNECT: u8 = b'C';
pub const SMFIC_MACRO: u8 = b'D';
pub const SMFIC_BODYEOB: u8 = b'E';
pub const SMFIC_HELO: u8 = b'H';
pub const SMFIC_QUIT_NC: u8 = b'K';
pub const SMFIC_HEADER: u8 = b'L';
pub const SMFIC_MAIL: u8 = b'M';
pub const SMFIC_EOH: u8 = b'N';
pub const SMFIC_OPTNEG: u8 = b'O';
pub const SMFIC_QUIT: u8 = b'Q';
pub const SMFIC_RCPT: u8 = b'R';
pub const SMFIC_DATA: u8 = b'T';
pub const SMFIC_UNKNOWN: u8 = b'U';

// milter -> MTA responses and actions.
pub const SMFIR_ADDRCPT: u8 = b'+';
pub const SMFIR_DELRCPT: u8 = b'-';
pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
pub const SMFIR_SHUTDOWN: u8 = b'4';
pub const SMFIR_ACCEPT: u8 = b'a';
pub const SMFIR_REPLBODY: u8 = b'b';
pub const SMFIR_CONTINUE: u8 = b'c';
pub const SMFIR_DISCARD: u8 = b'd';
pub const SMFIR_CHGFROM: u8 = b'e';
pub const SMFIR_CONN_FAIL: u8 = b'f';
pub const SMFIR_ADDHEADER: u8 = b'h';
pub const SMFIR_INSHEADER: u8 = b'i';
pub const SMFIR_CHGHEADER: u8 = b'm';
pub const SMFIR_PROGRESS: u8 = b'p';
pub const SMFIR_QUARANTINE: u8 = b'q';
pub const SMFIR_REJECT: u8 = b'r';
pub const SMFIR_SKIP: u8 = b's';
pub const SMFIR_TEMPFAIL: u8 = b't';
pub const SMFIR_REPLYCODE: u8 = b'y';

// The SMFIF_* actions and SMFIP_* protocol steps are the typed `Actions` and `Steps`.

// Macro stages in the negotiation reply (SMFIM_*).
pub const SMFIM_CONNECT: u32 = 0;
pub const SMFIM_HELO: u32 = 1;
pub const SMFIM_ENVFROM: u32 = 2;
pub const SMFIM_ENVRCPT: u32 = 3;
pub const SMFIM_DATA: u32 = 4;
pub const SMFIM_EOM: u32 = 5;
pub const SMFIM_EOH: u32 = 6;

/// Body chunks are sent in pieces of at most this size (MILTER_CHUNK_SIZE).
pub const CHUNK: usize = 65535;
