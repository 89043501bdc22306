//! Tag numbers, message types and enumerations of the FIX session layer (FIX 4.2 and 4.4).

/// Field delimiter (SOH, 0x01).
pub const SOH: u8 = 0x01;

/// BeginSeqNo(7).
pub const BEGIN_SEQ_NO: u32 = 7;
/// BeginString(8).
pub const BEGIN_STRING: u32 = 8;
/// BodyLength(9).
pub const BODY_LENGTH: u32 = 9;
/// CheckSum(10).
pub const CHECK_SUM: u32 = 10;
/// EndSeqNo(16).
pub const END_SEQ_NO: u32 = 16;
/// MsgSeqNum(34).
pub const MSG_SEQ_NUM: u32 = 34;
/// MsgType(35).
pub const MSG_TYPE: u32 = 35;
/// NewSeqNo(36).
pub const NEW_SEQ_NO: u32 = 36;
/// PossDupFlag(43).
pub const POSS_DUP_FLAG: u32 = 43;
/// RefSeqNum(45).
pub const REF_SEQ_NUM: u32 = 45;
/// SenderCompID(49).
pub const SENDER_COMP_ID: u32 = 49;
/// SendingTime(52).
pub const SENDING_TIME: u32 = 52;
/// TargetCompID(56).
pub const TARGET_COMP_ID: u32 = 56;
/// Text(58).
pub const TEXT: u32 = 58;
/// PossResend(97).
pub const POSS_RESEND: u32 = 97;
/// EncryptMethod(98).
pub const ENCRYPT_METHOD: u32 = 98;
/// HeartBtInt(108).
pub const HEART_BT_INT: u32 = 108;
/// TestReqID(112).
pub const TEST_REQ_ID: u32 = 112;
/// OrigSendingTime(122).
pub const ORIG_SENDING_TIME: u32 = 122;
/// GapFillFlag(123).
pub const GAP_FILL_FLAG: u32 = 123;
/// ResetSeqNumFlag(141).
pub const RESET_SEQ_NUM_FLAG: u32 = 141;
/// RefTagID(371).
pub const REF_TAG_ID: u32 = 371;
/// RefMsgType(372).
pub const REF_MSG_TYPE: u32 = 372;
/// SessionRejectReason(373).
pub const SESSION_REJECT_REASON: u32 = 373;

/// Tags of the standard header of FIX 4.2/4.4; the parser uses this to detect a header
/// field that follows a body field (SessionRejectReason 14).
pub const HEADER_TAGS: &[u32] = &[
    8, 9, 35, 49, 56, 115, 128, 90, 91, 34, 50, 142, 57, 143, 116, 144, 129, 145, 43, 97, 52, 122,
    212, 213, 347, 369, 627, 628, 629, 630,
];

/// Whether `tag` belongs to the standard header.
pub fn is_header_tag(tag: u32) -> bool {
    HEADER_TAGS.contains(&tag)
}

/// Length-prefixed data fields: (length tag, data tag). The data field may contain SOH, so
/// the parser must take exactly the announced number of bytes instead of scanning for SOH.
pub const DATA_FIELDS: &[(u32, u32)] = &[
    (90, 91),
    (93, 89),
    (95, 96),
    (212, 213),
    (348, 349),
    (350, 351),
    (352, 353),
    (354, 355),
    (356, 357),
    (358, 359),
    (360, 361),
    (362, 363),
    (364, 365),
    (445, 446),
    (618, 619),
    (621, 622),
];

/// The data tag announced by a length tag, if `tag` is one.
pub fn data_tag_for(length_tag: u32) -> Option<u32> {
    DATA_FIELDS
        .iter()
        .find(|(l, _)| *l == length_tag)
        .map(|(_, d)| *d)
}

/// Session-level message types.
pub mod msg_type {
    /// Heartbeat.
    pub const HEARTBEAT: &[u8] = b"0";
    /// TestRequest.
    pub const TEST_REQUEST: &[u8] = b"1";
    /// ResendRequest.
    pub const RESEND_REQUEST: &[u8] = b"2";
    /// Reject.
    pub const REJECT: &[u8] = b"3";
    /// SequenceReset.
    pub const SEQUENCE_RESET: &[u8] = b"4";
    /// Logout.
    pub const LOGOUT: &[u8] = b"5";
    /// Logon.
    pub const LOGON: &[u8] = b"A";

    /// Whether a MsgType is a session-level (admin) message; everything else is application.
    pub fn is_admin(msg_type: &[u8]) -> bool {
        matches!(msg_type, b"0" | b"1" | b"2" | b"3" | b"4" | b"5" | b"A")
    }
}

/// Supported protocol versions (BeginString).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BeginString {
    /// `FIX.4.2`.
    Fix42,
    /// `FIX.4.4`.
    Fix44,
}

impl BeginString {
    /// The wire value of tag 8.
    pub fn as_str(self) -> &'static str {
        match self {
            BeginString::Fix42 => "FIX.4.2",
            BeginString::Fix44 => "FIX.4.4",
        }
    }

    /// Parses the wire value of tag 8.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        match b {
            b"FIX.4.2" => Some(BeginString::Fix42),
            b"FIX.4.4" => Some(BeginString::Fix44),
            _ => None,
        }
    }
}

impl std::fmt::Display for BeginString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SessionRejectReason(373) values (FIX 4.4; 0–11 also exist in FIX 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionRejectReason {
    /// 0: Invalid tag number.
    InvalidTagNumber,
    /// 1: Required tag missing.
    RequiredTagMissing,
    /// 2: Tag not defined for this message type.
    TagNotDefinedForMsgType,
    /// 3: Undefined tag.
    UndefinedTag,
    /// 4: Tag specified without a value.
    TagWithoutValue,
    /// 5: Value is incorrect (out of range) for this tag.
    ValueIncorrect,
    /// 6: Incorrect data format for value.
    IncorrectDataFormat,
    /// 7: Decryption problem.
    DecryptionProblem,
    /// 8: Signature problem.
    SignatureProblem,
    /// 9: CompID problem.
    CompIdProblem,
    /// 10: SendingTime accuracy problem.
    SendingTimeAccuracy,
    /// 11: Invalid MsgType.
    InvalidMsgType,
    /// 13: Tag appears more than once.
    TagAppearsMoreThanOnce,
    /// 14: Tag specified out of required order.
    TagOutOfOrder,
    /// 16: Incorrect NumInGroup count for repeating group.
    IncorrectNumInGroup,
    /// 17: Non-data value includes field delimiter (SOH).
    SohInValue,
    /// 99: Other.
    Other,
}

impl SessionRejectReason {
    /// The numeric wire value of tag 373.
    pub fn code(self) -> u32 {
        match self {
            Self::InvalidTagNumber => 0,
            Self::RequiredTagMissing => 1,
            Self::TagNotDefinedForMsgType => 2,
            Self::UndefinedTag => 3,
            Self::TagWithoutValue => 4,
            Self::ValueIncorrect => 5,
            Self::IncorrectDataFormat => 6,
            Self::DecryptionProblem => 7,
            Self::SignatureProblem => 8,
            Self::CompIdProblem => 9,
            Self::SendingTimeAccuracy => 10,
            Self::InvalidMsgType => 11,
            Self::TagAppearsMoreThanOnce => 13,
            Self::TagOutOfOrder => 14,
            Self::IncorrectNumInGroup => 16,
            Self::SohInValue => 17,
            Self::Other => 99,
        }
    }

    /// Whether tag 373 may carry this value in `version`: FIX 4.2 defines only 0–11, so
    /// the newer reasons are sent as Text only.
    pub fn defined_in(self, version: BeginString) -> bool {
        match version {
            BeginString::Fix44 => true,
            BeginString::Fix42 => self.code() <= 11,
        }
    }
}
