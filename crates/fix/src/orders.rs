//! Order-entry messages as both the gateway and the exchange simulator handle them: the
//! application tags, appending fields to a pre-encoded body, and the check that a message
//! carries the tags needed to act on it (answered with a session-level Reject otherwise).

use crate::codec::Message;
use crate::engine::Outbox;
use crate::session::AppMessage;
use crate::tags::SessionRejectReason;

/// Application tags of order entry.
pub mod tag {
    /// AvgPx.
    pub const AVG_PX: u32 = 6;
    /// ClOrdID.
    pub const CL_ORD_ID: u32 = 11;
    /// CumQty.
    pub const CUM_QTY: u32 = 14;
    /// ExecID.
    pub const EXEC_ID: u32 = 17;
    /// ExecTransType (FIX 4.2 only).
    pub const EXEC_TRANS_TYPE: u32 = 20;
    /// LastPx.
    pub const LAST_PX: u32 = 31;
    /// LastQty (LastShares in FIX 4.2).
    pub const LAST_QTY: u32 = 32;
    /// OrderID.
    pub const ORDER_ID: u32 = 37;
    /// OrderQty.
    pub const ORDER_QTY: u32 = 38;
    /// OrdStatus.
    pub const ORD_STATUS: u32 = 39;
    /// OrdType.
    pub const ORD_TYPE: u32 = 40;
    /// OrigClOrdID.
    pub const ORIG_CL_ORD_ID: u32 = 41;
    /// Price.
    pub const PRICE: u32 = 44;
    /// Side.
    pub const SIDE: u32 = 54;
    /// Symbol.
    pub const SYMBOL: u32 = 55;
    /// TargetSubID.
    pub const TARGET_SUB_ID: u32 = 57;
    /// Text.
    pub const TEXT: u32 = 58;
    /// TimeInForce.
    pub const TIME_IN_FORCE: u32 = 59;
    /// TransactTime.
    pub const TRANSACT_TIME: u32 = 60;
    /// CxlRejReason.
    pub const CXL_REJ_REASON: u32 = 102;
    /// OrdRejReason.
    pub const ORD_REJ_REASON: u32 = 103;
    /// ExecType.
    pub const EXEC_TYPE: u32 = 150;
    /// LeavesQty.
    pub const LEAVES_QTY: u32 = 151;
    /// BusinessRejectRefID.
    pub const BUSINESS_REJECT_REF_ID: u32 = 379;
    /// BusinessRejectReason.
    pub const BUSINESS_REJECT_REASON: u32 = 380;
    /// CxlRejResponseTo.
    pub const CXL_REJ_RESPONSE_TO: u32 = 434;
    /// RefSeqNum.
    pub const REF_SEQ_NUM: u32 = 45;
    /// RefMsgType.
    pub const REF_MSG_TYPE: u32 = 372;
}

/// Appends `tag=value<SOH>` to a pre-encoded body. Values come from parsed fields or our
/// own formatting, so they never hold SOH.
pub fn put(body: &mut Vec<u8>, tag: u32, value: &[u8]) {
    body.extend_from_slice(tag.to_string().as_bytes());
    body.push(b'=');
    body.extend_from_slice(value);
    body.push(crate::tags::SOH);
}

/// Appends a text field.
pub fn put_str(body: &mut Vec<u8>, tag: u32, value: &str) {
    put(body, tag, value.as_bytes());
}

/// When `m` (received as `msg`) lacks a tag [`missing_required`] asks for, answer it with a
/// session-level Reject (RequiredTagMissing, naming the tag) and return true.
pub fn reject_if_incomplete(
    out: &mut Outbox,
    session: usize,
    msg: &AppMessage,
    m: &Message<'_>,
) -> bool {
    let mt = m.msg_type();
    let Some(t) = missing_required(m, mt) else {
        return false;
    };
    out.reject(
        session,
        msg.seq_num,
        &String::from_utf8_lossy(mt),
        Some(t),
        SessionRejectReason::RequiredTagMissing,
        &format!("required tag {t} missing"),
    );
    true
}

/// The tags a message of type `mt` must carry for the gateway and the simulator to act on
/// it; the first one missing is returned.
pub fn missing_required(m: &Message<'_>, mt: &[u8]) -> Option<u32> {
    let required: &[u32] = match mt {
        b"D" => &[
            tag::CL_ORD_ID,
            tag::SYMBOL,
            tag::SIDE,
            tag::ORDER_QTY,
            tag::ORD_TYPE,
        ],
        b"F" => &[tag::CL_ORD_ID, tag::ORIG_CL_ORD_ID, tag::SYMBOL, tag::SIDE],
        b"G" => &[
            tag::CL_ORD_ID,
            tag::ORIG_CL_ORD_ID,
            tag::SYMBOL,
            tag::SIDE,
            tag::ORDER_QTY,
            tag::ORD_TYPE,
        ],
        b"8" => &[tag::CL_ORD_ID, tag::ORDER_ID, tag::EXEC_ID, tag::ORD_STATUS],
        b"9" => &[tag::CL_ORD_ID, tag::ORDER_ID, tag::ORD_STATUS],
        _ => &[],
    };
    required.iter().copied().find(|&t| m.get(t).is_none())
}
