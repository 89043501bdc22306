//! A FIX exchange simulator: the acceptor upstream of the gateway in tests, benchmarks and the
//! demo. It accepts any counterparty whose Logon names its CompID, and answers
//!
//! * NewOrderSingle(D): ExecutionReport New (150=0); a market order (40=1) then fills, in two
//!   executions when its quantity allows (partial, then full); other orders rest.
//! * OrderCancelRequest(F): ExecutionReport Canceled (150=4), or OrderCancelReject(9).
//! * OrderCancelReplaceRequest(G): ExecutionReport Replaced (150=5) with the new quantity and
//!   price, or OrderCancelReject(9).
//!
//! A resent order (PossDupFlag=Y) whose ClOrdID it already knows is ignored, so an order
//! resent after a gateway failover is executed once.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::codec::{parse, Message};
use crate::engine::{Application, LogonInfo, Outbox, SessionSlot};
use crate::orders::{put, put_str, reject_if_incomplete, tag};
use crate::session::{AppMessage, Role, Session, SessionConfig};
use crate::store::{MemoryStore, SessionId};
use crate::tags::BeginString;

#[derive(Debug, Clone)]
struct Order {
    order_id: String,
    symbol: String,
    side: String,
    qty: f64,
    price: Option<f64>,
    cum: f64,
    status: u8,
}

/// The simulator's application state.
#[derive(Debug)]
pub struct ExchangeSim {
    begin_strings: HashMap<usize, BeginString>,
    /// Orders by (session, ClOrdID currently naming it).
    orders: HashMap<(usize, String), Order>,
    next_order: u64,
    next_exec: u64,
    /// Distinguishes the ExecIDs of two runs of the simulator.
    run_id: u64,
    /// Price of market-order fills when the order has none.
    pub fill_price: f64,
}

impl Default for ExchangeSim {
    fn default() -> Self {
        Self::new()
    }
}

fn fmt_qty(q: f64) -> String {
    if q.fract() == 0.0 && q.abs() < 1e15 {
        format!("{}", q as i64)
    } else {
        format!("{q}")
    }
}

fn num(m: &Message<'_>, t: u32) -> Option<f64> {
    m.get_str(t)?.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl ExchangeSim {
    /// A simulator with no orders.
    pub fn new() -> Self {
        let run_id = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ExchangeSim {
            begin_strings: HashMap::new(),
            orders: HashMap::new(),
            next_order: 1,
            next_exec: 1,
            run_id,
            fill_price: 100.0,
        }
    }

    /// A session factory for [`crate::engine::Engine::with_factory`]: any counterparty that
    /// logs on to `comp_id` gets a session over a memory store.
    pub fn factory(
        comp_id: String,
    ) -> impl FnMut(&SessionId) -> Option<SessionSlot<MemoryStore>> + Send {
        move |sid: &SessionId| {
            if sid.sender_comp_id != comp_id {
                return None;
            }
            let mut cfg = SessionConfig::new(
                sid.begin_string,
                &sid.sender_comp_id,
                &sid.target_comp_id,
                Role::Acceptor,
            );
            cfg.logon_timeout = Duration::from_secs(5);
            // A simulator takes any counterparty as it comes, resets included.
            cfg.allow_peer_reset = true;
            let session = Session::new(cfg, MemoryStore::new()).ok()?;
            Some(SessionSlot::new(&sid.target_comp_id, session))
        }
    }

    fn bs(&self, session: usize) -> BeginString {
        self.begin_strings
            .get(&session)
            .copied()
            .unwrap_or(BeginString::Fix44)
    }

    fn exec_id(&mut self) -> String {
        let id = format!("E{}-{}", self.run_id, self.next_exec);
        self.next_exec += 1;
        id
    }

    /// ExecType for a fill: `1`/`2` in FIX 4.2, `F` (Trade) in FIX 4.4.
    fn fill_exec_type(bs: BeginString, full: bool) -> &'static [u8] {
        match (bs, full) {
            (BeginString::Fix42, false) => b"1",
            (BeginString::Fix42, true) => b"2",
            (BeginString::Fix44, _) => b"F",
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        out: &mut Outbox,
        session: usize,
        cl_ord_id: &str,
        orig: Option<&str>,
        o: &Order,
        exec_type: &[u8],
        last: Option<(f64, f64)>,
        text: Option<&str>,
    ) {
        let bs = self.bs(session);
        let mut b = Vec::with_capacity(256);
        put_str(&mut b, tag::ORDER_ID, &o.order_id);
        put_str(&mut b, tag::CL_ORD_ID, cl_ord_id);
        if let Some(orig) = orig {
            put_str(&mut b, tag::ORIG_CL_ORD_ID, orig);
        }
        let exec_id = self.exec_id();
        put_str(&mut b, tag::EXEC_ID, &exec_id);
        if bs == BeginString::Fix42 {
            put(&mut b, tag::EXEC_TRANS_TYPE, b"0");
        }
        put(&mut b, tag::EXEC_TYPE, exec_type);
        put(&mut b, tag::ORD_STATUS, &[o.status]);
        put_str(&mut b, tag::SYMBOL, &o.symbol);
        put_str(&mut b, tag::SIDE, &o.side);
        put_str(&mut b, tag::ORDER_QTY, &fmt_qty(o.qty));
        if let Some(p) = o.price {
            put_str(&mut b, tag::PRICE, &format!("{p}"));
        }
        let (lq, lp) = last.unwrap_or((0.0, 0.0));
        put_str(&mut b, tag::LAST_QTY, &fmt_qty(lq));
        put_str(&mut b, tag::LAST_PX, &format!("{lp}"));
        let leaves = if matches!(o.status, b'2' | b'4' | b'8') {
            0.0
        } else {
            (o.qty - o.cum).max(0.0)
        };
        put_str(&mut b, tag::LEAVES_QTY, &fmt_qty(leaves));
        put_str(&mut b, tag::CUM_QTY, &fmt_qty(o.cum));
        let avg = if o.cum > 0.0 { self.fill_price } else { 0.0 };
        put_str(&mut b, tag::AVG_PX, &format!("{avg}"));
        if let Some(t) = text {
            put_str(&mut b, tag::TEXT, t);
        }
        b.extend_from_slice(b"60=");
        crate::time::write_utc_timestamp(&mut b, SystemTime::now());
        b.push(crate::tags::SOH);
        out.send(session, b"8", b);
    }

    fn cancel_reject(
        &self,
        out: &mut Outbox,
        session: usize,
        m: &Message<'_>,
        response_to: &[u8],
        text: &str,
    ) {
        let mut b = Vec::with_capacity(128);
        let orig = m.get_str(tag::ORIG_CL_ORD_ID).unwrap_or("NONE");
        let (order_id, status) = match self.orders.get(&(session, orig.to_owned())) {
            Some(o) => (o.order_id.clone(), o.status),
            None => ("NONE".to_owned(), b'8'),
        };
        put_str(&mut b, tag::ORDER_ID, &order_id);
        put(
            &mut b,
            tag::CL_ORD_ID,
            m.get(tag::CL_ORD_ID).unwrap_or(b"NONE"),
        );
        put_str(&mut b, tag::ORIG_CL_ORD_ID, orig);
        put(&mut b, tag::ORD_STATUS, &[status]);
        put(&mut b, tag::CXL_REJ_RESPONSE_TO, response_to);
        // 1: unknown order; 0: too late (already done).
        let reason: &[u8] = if order_id == "NONE" { b"1" } else { b"0" };
        put(&mut b, tag::CXL_REJ_REASON, reason);
        put_str(&mut b, tag::TEXT, text);
        out.send(session, b"9", b);
    }

    /// Answer a NewOrderSingle that is not accepted with an ExecutionReport Rejected (150=8).
    fn reject_order(
        &mut self,
        out: &mut Outbox,
        session: usize,
        cl: &str,
        m: &Message<'_>,
        qty: f64,
        text: &str,
    ) {
        let o = Order {
            order_id: "NONE".into(),
            symbol: m.get_str(tag::SYMBOL).unwrap_or("?").to_owned(),
            side: m.get_str(tag::SIDE).unwrap_or("1").to_owned(),
            qty,
            price: None,
            cum: 0.0,
            status: b'8',
        };
        self.report(out, session, cl, None, &o, b"8", None, Some(text));
    }

    fn new_order(&mut self, out: &mut Outbox, session: usize, m: &Message<'_>, poss_dup: bool) {
        let cl = m.get_str(tag::CL_ORD_ID).unwrap_or_default().to_owned();
        if self.orders.contains_key(&(session, cl.clone())) {
            if poss_dup {
                return;
            }
            let qty = num(m, tag::ORDER_QTY).unwrap_or(0.0);
            return self.reject_order(out, session, &cl, m, qty, "duplicate ClOrdID");
        }
        let qty = num(m, tag::ORDER_QTY).filter(|q| *q > 0.0);
        let Some(qty) = qty else {
            return self.reject_order(out, session, &cl, m, 0.0, "bad OrderQty");
        };
        let mut o = Order {
            order_id: format!("O{}", self.next_order),
            symbol: m.get_str(tag::SYMBOL).unwrap_or_default().to_owned(),
            side: m.get_str(tag::SIDE).unwrap_or_default().to_owned(),
            qty,
            price: num(m, tag::PRICE),
            cum: 0.0,
            status: b'0',
        };
        self.next_order += 1;
        self.report(out, session, &cl, None, &o.clone(), b"0", None, None);
        if m.get(tag::ORD_TYPE) == Some(b"1") {
            let px = o.price.unwrap_or(self.fill_price);
            let bs = self.bs(session);
            let half = (qty / 2.0).floor();
            if half >= 1.0 {
                o.cum = half;
                o.status = b'1';
                let snap = o.clone();
                let et = Self::fill_exec_type(bs, false);
                self.report(out, session, &cl, None, &snap, et, Some((half, px)), None);
            }
            let rest = qty - o.cum;
            o.cum = qty;
            o.status = b'2';
            let snap = o.clone();
            let et = Self::fill_exec_type(bs, true);
            self.report(out, session, &cl, None, &snap, et, Some((rest, px)), None);
        }
        self.orders.insert((session, cl), o);
    }

    /// The order a cancel or replace request names, taken out of the book: `(ClOrdID, OrigClOrdID,
    /// order)`. None when the request is a repeat already handled (PossDup) or names an unknown
    /// order, which is rejected with CxlRejResponseTo `response_to`.
    fn take_amended(
        &mut self,
        out: &mut Outbox,
        session: usize,
        m: &Message<'_>,
        poss_dup: bool,
        response_to: &[u8],
    ) -> Option<(String, String, Order)> {
        let cl = m.get_str(tag::CL_ORD_ID).unwrap_or_default().to_owned();
        let orig = m
            .get_str(tag::ORIG_CL_ORD_ID)
            .unwrap_or_default()
            .to_owned();
        if poss_dup && self.orders.contains_key(&(session, cl.clone())) {
            return None;
        }
        let Some(o) = self.orders.remove(&(session, orig.clone())) else {
            self.cancel_reject(out, session, m, response_to, "unknown order");
            return None;
        };
        Some((cl, orig, o))
    }

    fn cancel(&mut self, out: &mut Outbox, session: usize, m: &Message<'_>, poss_dup: bool) {
        let Some((cl, orig, mut o)) = self.take_amended(out, session, m, poss_dup, b"1") else {
            return;
        };
        if matches!(o.status, b'2' | b'4' | b'8') {
            self.orders.insert((session, orig), o);
            return self.cancel_reject(out, session, m, b"1", "order is done");
        }
        o.status = b'4';
        let snap = o.clone();
        self.report(out, session, &cl, Some(&orig), &snap, b"4", None, None);
        self.orders.insert((session, cl), o);
    }

    fn replace(&mut self, out: &mut Outbox, session: usize, m: &Message<'_>, poss_dup: bool) {
        let Some((cl, orig, mut o)) = self.take_amended(out, session, m, poss_dup, b"2") else {
            return;
        };
        let new_qty = num(m, tag::ORDER_QTY).unwrap_or(o.qty);
        if matches!(o.status, b'2' | b'4' | b'8') || new_qty <= o.cum {
            self.orders.insert((session, orig), o);
            return self.cancel_reject(out, session, m, b"2", "order is done or quantity too low");
        }
        o.qty = new_qty;
        if let Some(p) = num(m, tag::PRICE) {
            o.price = Some(p);
        }
        o.status = if o.cum > 0.0 { b'1' } else { b'0' };
        let snap = o.clone();
        // OrdStatus after a replace is the order's state; ExecType says it was replaced.
        self.report(out, session, &cl, Some(&orig), &snap, b"5", None, None);
        self.orders.insert((session, cl), o);
    }
}

impl Application for ExchangeSim {
    fn on_logon(&mut self, _out: &mut Outbox, session: usize, info: &LogonInfo) {
        self.begin_strings.insert(session, info.id.begin_string);
        tracing::info!(counterparty = %info.id.target_comp_id, "exchange-sim: logon");
    }

    fn on_message(&mut self, out: &mut Outbox, session: usize, msg: &AppMessage) {
        let Ok(m) = parse(&msg.frame) else {
            return;
        };
        let mt = m.msg_type();
        let mt_str = String::from_utf8_lossy(mt).into_owned();
        if reject_if_incomplete(out, session, msg, &m) {
            return;
        }
        // A possible duplicate, by MsgSeqNum (PossDup) or forwarded again (PossResend).
        let dup = msg.poss_dup || m.get(crate::tags::POSS_RESEND) == Some(b"Y");
        match mt {
            b"D" => self.new_order(out, session, &m, dup),
            b"F" => self.cancel(out, session, &m, dup),
            b"G" => self.replace(out, session, &m, dup),
            _ => {
                // BusinessMessageReject: unsupported message type (3).
                let mut b = Vec::new();
                put_str(&mut b, tag::REF_SEQ_NUM, &msg.seq_num.to_string());
                put_str(&mut b, tag::REF_MSG_TYPE, &mt_str);
                put(&mut b, tag::BUSINESS_REJECT_REASON, b"3");
                put_str(&mut b, tag::TEXT, "unsupported message type");
                out.send(session, b"j", b);
            }
        }
    }
}
