//! Property tests for the points ledger (issue 4): random sequences of
//! awards, redemptions, adjustments, cancels of earns, orders paid /
//! refunded / cancelled through `/v1/webhooks/orders`, points-paid orders,
//! program changes, expiry sweeps and clock advances, all through the
//! native host. After every step the ledger's invariants hold (read from
//! the database and from the balance endpoint), and replaying the same
//! sequence on a fresh host gives the same ledger.
//!
//! A failure prints the shrunk sequence (`Case`), the step that broke and
//! the contact's entries and lots at that moment. 24 cases by default;
//! `PROPTEST_CASES=500 cargo test -p kizuna-tests --test api
//! points_properties` for a deeper run.

use crate::helpers::*;
use kizuna::signatures::sign_standard;
use kizuna::timestamp;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rusqlite::OptionalExtension as _;
use serde_json::{Value as Json, json};
use time::{Duration, OffsetDateTime};

type Checked<T = ()> = Result<T, TestCaseError>;

// ---------------------------------------------------------------------------
// The generated sequence
// ---------------------------------------------------------------------------

/// The program's expiry policy, as `PUT /v1/points/program` takes it.
#[derive(Debug, Clone)]
enum Expiry {
    DaysAfterEarn(u32),
    EndOfMonthAfter(u32),
    Never,
}

/// How many points a redemption asks for.
#[derive(Debug, Clone, Copy)]
enum Amount {
    Points(i64),
    /// What is available when the step runs, plus this (at least 1): the
    /// edge between 201 and 409.
    AvailablePlus(i64),
}

/// One step. Contacts are indices taken modulo the case's contact count;
/// `Index` picks among what exists when the step runs (earn entries in
/// ledger order, orders in the order they were placed), so a shrunk
/// sequence stays meaningful.
#[derive(Debug, Clone)]
enum Op {
    /// `POST /v1/points/award`; `pending_minutes` sets `available_at`
    /// that far ahead, `expires_minutes` sets `expires_at` that long after
    /// `available_at` (or now).
    Award {
        contact: usize,
        points: i64,
        pending_minutes: Option<i64>,
        expires_minutes: Option<i64>,
    },
    /// `count` awards of `points` in a row: more open lots than a
    /// redemption reads in one page.
    AwardBurst {
        contact: usize,
        count: usize,
        points: i64,
    },
    /// `POST /v1/points/redeem` with a fresh `Idempotency-Key`.
    Redeem { contact: usize, points: Amount },
    /// `POST /v1/points/adjust` (admin), signed.
    Adjust { contact: usize, points: i64 },
    /// `POST /v1/points/entries/{id}/cancel` of an earlier earn entry.
    CancelEarn { earn: Index },
    /// `order.paid` for a new order with these line totals (yen).
    OrderPaid { contact: usize, lines: Vec<i64> },
    /// A redemption with the new order's id as `order_ref`, then its
    /// `order.paid` with `points_used` (0 when the redemption was refused).
    PointsPaidOrder {
        contact: usize,
        points: Amount,
        lines: Vec<i64>,
    },
    /// A redemption for an existing order, by its customer.
    RedeemForOrder { order: Index, points: Amount },
    /// `order.refunded` with one more refund of `per_mille` of what is
    /// still unrefunded (at least 1 yen).
    RefundOrder { order: Index, per_mille: i64 },
    /// `order.cancelled`.
    CancelOrder { order: Index },
    /// An order event sent before, again under a new webhook id.
    Redeliver { event: Index },
    /// The host's clock moves forward.
    Advance { minutes: i64 },
    /// The clock moves exactly onto a future `available_at` or
    /// `expires_at` of some lot: the boundaries themselves.
    AdvanceToBoundary { boundary: Index },
    /// `PUT /v1/points/program`.
    Program {
        earn_points: u32,
        pending_days: u32,
        expiry: Expiry,
        min_redeem: u32,
    },
    /// `POST /v1/points/expire-due`.
    ExpireDue,
}

#[derive(Debug, Clone)]
struct Case {
    contacts: usize,
    ops: Vec<Op>,
}

fn amount(max: i64) -> impl Strategy<Value = Amount> {
    prop_oneof![
        3 => (1..=max).prop_map(Amount::Points),
        2 => (-3..=2i64).prop_map(Amount::AvailablePlus),
    ]
}

fn lines() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(100..=30_000i64, 1..=3)
}

fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![
        (1..=400u32).prop_map(Expiry::DaysAfterEarn),
        (0..=13u32).prop_map(Expiry::EndOfMonthAfter),
        Just(Expiry::Never),
    ]
}

fn advance() -> impl Strategy<Value = i64> {
    prop_oneof![
        1..=120i64,
        (1..=72i64).prop_map(|hours| hours * 60),
        (1..=400i64).prop_map(|days| days * 24 * 60),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let contact = 0..3usize;
    prop_oneof![
        4 => (
            contact.clone(),
            1..=500i64,
            prop::option::weighted(0.25, 1..=43_200i64),
            prop::option::weighted(0.25, 1..=20_160i64),
        )
            .prop_map(|(contact, points, pending_minutes, expires_minutes)| Op::Award {
                contact,
                points,
                pending_minutes,
                expires_minutes,
            }),
        1 => (contact.clone(), 60..=80usize, 1..=5i64)
            .prop_map(|(contact, count, points)| Op::AwardBurst { contact, count, points }),
        4 => (contact.clone(), amount(600))
            .prop_map(|(contact, points)| Op::Redeem { contact, points }),
        2 => (contact.clone(), prop_oneof![-500..=-1i64, 1..=500i64])
            .prop_map(|(contact, points)| Op::Adjust { contact, points }),
        2 => any::<Index>().prop_map(|earn| Op::CancelEarn { earn }),
        3 => (contact.clone(), lines()).prop_map(|(contact, lines)| Op::OrderPaid { contact, lines }),
        2 => (contact, amount(500), lines()).prop_map(|(contact, points, lines)| {
            Op::PointsPaidOrder {
                contact,
                points,
                lines,
            }
        }),
        1 => (any::<Index>(), amount(300))
            .prop_map(|(order, points)| Op::RedeemForOrder { order, points }),
        2 => (any::<Index>(), 1..=1000i64)
            .prop_map(|(order, per_mille)| Op::RefundOrder { order, per_mille }),
        2 => any::<Index>().prop_map(|order| Op::CancelOrder { order }),
        1 => any::<Index>().prop_map(|event| Op::Redeliver { event }),
        4 => advance().prop_map(|minutes| Op::Advance { minutes }),
        2 => any::<Index>().prop_map(|boundary| Op::AdvanceToBoundary { boundary }),
        1 => (
            1..=3u32,
            prop_oneof![Just(0u32), 1..=30u32],
            expiry(),
            prop_oneof![3 => Just(1u32), 1 => 1..=50u32],
        )
            .prop_map(|(earn_points, pending_days, expiry, min_redeem)| Op::Program {
                earn_points,
                pending_days,
                expiry,
                min_redeem,
            }),
        1 => Just(Op::ExpireDue),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (2..=3usize, prop::collection::vec(op(), 5..=40))
        .prop_map(|(contacts, ops)| Case { contacts, ops })
}

// ---------------------------------------------------------------------------
// Driving one host through a sequence
// ---------------------------------------------------------------------------

/// An order this run has placed, as the shop knows it.
struct Order {
    external_id: String,
    contact: usize,
    /// The event's `data`, without refunds.
    data: Json,
    total: i64,
    refunds: Vec<Json>,
    refunded: i64,
}

/// An entry as compared: (kind, points, balance_after, reason).
type EntryRow = (String, i64, i64, Option<String>);
/// A lot as compared: (original, remaining, available_at, expires_at).
type LotRow = (i64, i64, String, Option<String>);

/// The ledger compared between a run and its replay: contents, not ids.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// Per contact (in creation order): (kind, points, balance_after, reason).
    entries: Vec<Vec<EntryRow>>,
    /// Per contact: (original, remaining, available_at, expires_at).
    lots: Vec<Vec<LotRow>>,
    /// Per contact: (balance, debt, earned, redeemed, expired, reversed, adjusted).
    accounts: Vec<Option<[i64; 7]>>,
}

struct Run {
    app: TestApp,
    contacts: Vec<String>,
    orders: Vec<Order>,
    /// Bodies of the order events sent, for redelivery.
    events: Vec<String>,
    /// Makes webhook ids, idempotency keys, order ids and reasons unique.
    serial: usize,
    min_redeem: i64,
    /// What each step answered, compared with the replay's.
    outcomes: Vec<String>,
}

fn status(response: &TestResponse, expected: &[u16], what: &str) -> Checked {
    prop_assert!(
        expected.contains(&response.status),
        "{what}: expected {expected:?}, got {}: {}",
        response.status,
        response.text()
    );
    Ok(())
}

fn money(amount: i64) -> String {
    amount.to_string()
}

impl Run {
    fn new(contacts: usize) -> Run {
        let app = TestApp::new();
        let contacts = (0..contacts)
            .map(|i| app.create_contact(&json!({"email": format!("member{i}@example.jp")})))
            .collect();
        Run {
            app,
            contacts,
            orders: Vec::new(),
            events: Vec::new(),
            serial: 0,
            min_redeem: 1,
            outcomes: Vec::new(),
        }
    }

    fn next(&mut self) -> usize {
        self.serial += 1;
        self.serial
    }

    fn now(&self) -> OffsetDateTime {
        self.app.now()
    }

    fn contact(&self, index: usize) -> usize {
        index % self.contacts.len()
    }

    fn balance(&self, contact: usize) -> Checked<Json> {
        let id = &self.contacts[contact];
        let response = self.app.get(POINTS_KEY, &format!("/v1/points/{id}"));
        status(&response, &[200], "balance")?;
        Ok(response.json())
    }

    fn available(&self, contact: usize) -> Checked<i64> {
        let balance = self.balance(contact)?;
        balance["available"]
            .as_i64()
            .ok_or_else(|| TestCaseError::fail(format!("no available in {balance}")))
    }

    /// `POST /v1/points/award` with its unique reason as its
    /// `Idempotency-Key` (spaces as dashes).
    fn award(&self, body: &Json, reason: &str) -> TestResponse {
        let idempotency_key = reason.replace(' ', "-");
        self.app.request(
            "POST",
            "/v1/points/award",
            &[
                ("authorization", &format!("Bearer {POINTS_KEY}")),
                ("content-type", "application/json"),
                ("idempotency-key", &idempotency_key),
            ],
            body.to_string(),
        )
    }

    /// A redemption: 201 only when enough was available (and then exactly
    /// that much less is), 409 reporting what the balance endpoint says,
    /// 422 only under the program's minimum.
    fn redeem(
        &mut self,
        contact: usize,
        amount: Amount,
        order_ref: Option<&str>,
    ) -> Checked<(u16, i64)> {
        let before = self.available(contact)?;
        let points = match amount {
            Amount::Points(points) => points,
            Amount::AvailablePlus(delta) => (before + delta).max(1),
        };
        let key = format!("redeem-{}", self.next());
        let mut body =
            json!({"contact_id": self.contacts[contact], "points": points, "reason": key});
        if let Some(order_ref) = order_ref {
            body["order_ref"] = json!(order_ref);
        }
        let response = self.app.request(
            "POST",
            "/v1/points/redeem",
            &[
                ("authorization", &format!("Bearer {POINTS_KEY}")),
                ("content-type", "application/json"),
                ("idempotency-key", &key),
            ],
            body.to_string(),
        );
        let after = self.available(contact)?;
        match response.status {
            201 => {
                prop_assert!(
                    points >= self.min_redeem && points <= before,
                    "redeemed {points} with {before} available (minimum {})",
                    self.min_redeem
                );
                prop_assert_eq!(
                    after,
                    before - points,
                    "available after redeeming {}",
                    points
                );
                prop_assert_eq!(&response.json()["balance"]["available"], &json!(after));
            }
            409 => {
                let problem = response.assert_problem(409, "insufficient points");
                prop_assert_eq!(
                    &problem["available"],
                    &json!(after),
                    "409 must report the balance endpoint's available"
                );
                prop_assert_eq!(after, before, "a refused redemption changes nothing");
                prop_assert!(
                    points > before,
                    "refused {} with {} available",
                    points,
                    before
                );
            }
            422 => {
                response.assert_problem(422, "under the minimum");
                prop_assert!(
                    points < self.min_redeem,
                    "422 for {points} points with minimum {}: {}",
                    self.min_redeem,
                    response.text()
                );
            }
            other => {
                return Err(TestCaseError::fail(format!(
                    "redeem: unexpected {other}: {}",
                    response.text()
                )));
            }
        }
        Ok((response.status, points))
    }

    /// Signs and posts an order event body; remembers it for redelivery.
    fn post_event(&mut self, body: String) -> Checked<String> {
        let msg_id = format!("msg-{}", self.next());
        let ts = self.now().unix_timestamp();
        let signature = sign_standard(ORDERS_SECRET, &msg_id, ts, body.as_bytes());
        let response = self.app.request(
            "POST",
            "/v1/webhooks/orders",
            &[
                ("content-type", "application/json"),
                ("webhook-id", &msg_id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &signature),
            ],
            body.clone(),
        );
        status(&response, &[200], "order webhook")?;
        self.events.push(body);
        Ok(response.json()["status"].as_str().unwrap_or("?").to_owned())
    }

    fn order_event(&mut self, kind: &str, order: usize) -> Checked<String> {
        let order = &self.orders[order];
        let mut data = order.data.clone();
        data["refunds"] = Json::Array(order.refunds.clone());
        let body = json!({"type": kind, "data": data}).to_string();
        self.post_event(body)
    }

    /// Places and pays a new order for `contact`.
    fn place_order(
        &mut self,
        contact: usize,
        lines: &[i64],
        points_used: i64,
        external_id: String,
    ) -> Checked<String> {
        // The points paid for part of the goods: never more than they cost.
        let mut lines = lines.to_vec();
        let goods: i64 = lines.iter().sum();
        if points_used > goods {
            lines.push(points_used - goods);
        }
        let subtotal: i64 = lines.iter().sum();
        let tax = subtotal / 10;
        let shipping = 500;
        let total = subtotal + tax + shipping - points_used;
        let data = json!({
            "id": external_id,
            "number": format!("#{external_id}"),
            "currency": "JPY",
            "placed_at": timestamp::format(self.now()),
            "customer": {"email": format!("member{contact}@example.jp")},
            "subtotal": money(subtotal),
            "shipping": money(shipping),
            "tax": money(tax),
            "discount": "0",
            "total": money(total),
            "points_used": points_used,
            "lines": lines.iter().enumerate().map(|(i, amount)| json!({
                "id": format!("L{i}"),
                "sku": format!("SKU-{i}"),
                "name": "tea",
                "category": "tea",
                "quantity": 1,
                "unit_price": money(*amount),
                "total": money(*amount),
            })).collect::<Vec<_>>(),
        });
        self.orders.push(Order {
            external_id,
            contact,
            data,
            total,
            refunds: Vec::new(),
            refunded: 0,
        });
        self.order_event("order.paid", self.orders.len() - 1)
    }

    fn step(&mut self, op: &Op) -> Checked<String> {
        Ok(match op {
            Op::Award {
                contact,
                points,
                pending_minutes,
                expires_minutes,
            } => {
                let contact = self.contact(*contact);
                let now = self.now();
                let reason = format!("award {}", self.next());
                let mut body = json!({"contact_id": self.contacts[contact], "points": points, "reason": reason});
                let available_at = pending_minutes.map(|m| now + Duration::minutes(m));
                if let Some(at) = available_at {
                    body["available_at"] = json!(timestamp::format(at));
                }
                if let Some(m) = expires_minutes {
                    let at = available_at.unwrap_or(now) + Duration::minutes(*m);
                    body["expires_at"] = json!(timestamp::format(at));
                }
                let response = self.award(&body, &reason);
                status(&response, &[201], "award")?;
                format!("award {}", response.status)
            }
            Op::AwardBurst {
                contact,
                count,
                points,
            } => {
                let contact = self.contact(*contact);
                for _ in 0..*count {
                    let reason = format!("burst {}", self.next());
                    let response = self.award(
                        &json!({"contact_id": self.contacts[contact], "points": points, "reason": reason}),
                        &reason,
                    );
                    status(&response, &[201], "award in a burst")?;
                }
                format!("burst of {count}")
            }
            Op::Redeem { contact, points } => {
                let contact = self.contact(*contact);
                format!("redeem {}", self.redeem(contact, *points, None)?.0)
            }
            Op::Adjust { contact, points } => {
                let contact = self.contact(*contact);
                let reason = format!("adjust {}", self.next());
                let response = self.app.send_json(
                    "POST",
                    POINTS_ADMIN_KEY,
                    "/v1/points/adjust",
                    &json!({"contact_id": self.contacts[contact], "points": points, "reason": reason}),
                );
                status(&response, &[201], "adjust")?;
                format!("adjust {}", response.status)
            }
            Op::CancelEarn { earn } => {
                let earns = self.earns()?;
                if earns.is_empty() {
                    return Ok("cancel: no earn".into());
                }
                let (id, points) = &earns[earn.index(earns.len())];
                // What the cancel may take back: the earn minus what
                // reversals and cancels already took, minus what expired
                // (swept, or past `expires_at` and about to be swept).
                let now = timestamp::format(self.now());
                let (taken, expired): (i64, i64) = self
                    .app
                    .db()
                    .query_row(
                        "SELECT
                           (SELECT COALESCE(-SUM(points), 0) FROM points_entries
                            WHERE related_entry_id = ?1 AND kind IN ('reverse', 'cancel') AND points < 0),
                           (SELECT COALESCE(-SUM(points), 0) FROM points_entries
                            WHERE related_entry_id = ?1 AND kind = 'expire')
                           + (SELECT COALESCE(SUM(remaining), 0) FROM points_lots
                              WHERE entry_id = ?1 AND expires_at <= ?2)",
                        [id, &now],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let left = points - taken - expired;
                let reason = format!("cancel {}", self.next());
                let response = self.app.send_json(
                    "POST",
                    POINTS_ADMIN_KEY,
                    &format!("/v1/points/entries/{id}/cancel"),
                    &json!({"reason": reason}),
                );
                let what = format!(
                    "cancel of an earn of {points} with {taken} taken back and {expired} expired"
                );
                if left > 0 {
                    status(&response, &[201], &what)?;
                    prop_assert_eq!(&response.json()["points"], &json!(-left), "{}", what);
                } else {
                    status(&response, &[409], &what)?;
                }
                format!("cancel {}", response.status)
            }
            Op::OrderPaid { contact, lines } => {
                let contact = self.contact(*contact);
                let external_id = format!("ORD-{}", self.next());
                format!("paid {}", self.place_order(contact, lines, 0, external_id)?)
            }
            Op::PointsPaidOrder {
                contact,
                points,
                lines,
            } => {
                let contact = self.contact(*contact);
                let external_id = format!("ORD-{}", self.next());
                let (redeemed, points) = self.redeem(contact, *points, Some(&external_id))?;
                let used = if redeemed == 201 { points } else { 0 };
                let answer = self.place_order(contact, lines, used, external_id)?;
                format!("points-paid redeem {redeemed}, paid {answer}")
            }
            Op::RedeemForOrder { order, points } => {
                if self.orders.is_empty() {
                    return Ok("redeem for order: no order".into());
                }
                let order = &self.orders[order.index(self.orders.len())];
                let (contact, external_id) = (order.contact, order.external_id.clone());
                format!(
                    "redeem for order {}",
                    self.redeem(contact, *points, Some(&external_id))?.0
                )
            }
            Op::RefundOrder { order, per_mille } => {
                if self.orders.is_empty() {
                    return Ok("refund: no order".into());
                }
                let index = order.index(self.orders.len());
                let left = self.orders[index].total - self.orders[index].refunded;
                if left <= 0 {
                    return Ok("refund: nothing left".into());
                }
                let amount = (left * per_mille / 1000).clamp(1, left);
                let refund_id = format!("R-{}", self.next());
                let refunded_at = timestamp::format(self.now());
                let order = &mut self.orders[index];
                order.refunds.push(json!({
                    "id": refund_id, "amount": money(amount), "reason": "returned",
                    "refunded_at": refunded_at,
                }));
                order.refunded += amount;
                format!("refund {}", self.order_event("order.refunded", index)?)
            }
            Op::CancelOrder { order } => {
                if self.orders.is_empty() {
                    return Ok("cancel order: no order".into());
                }
                let index = order.index(self.orders.len());
                format!(
                    "cancel order {}",
                    self.order_event("order.cancelled", index)?
                )
            }
            Op::Redeliver { event } => {
                if self.events.is_empty() {
                    return Ok("redeliver: no event".into());
                }
                let body = self.events[event.index(self.events.len())].clone();
                format!("redeliver {}", self.post_event(body)?)
            }
            Op::Advance { minutes } => {
                self.app.clock.advance(Duration::minutes(*minutes));
                format!("advance {minutes}")
            }
            Op::AdvanceToBoundary { boundary } => {
                let now = self.now();
                let at = timestamp::format(now);
                let db = self.app.db();
                let mut statement = db
                    .prepare(
                        "SELECT available_at AS at FROM points_lots WHERE available_at > ?1
                         UNION SELECT expires_at FROM points_lots WHERE expires_at > ?1
                         ORDER BY at",
                    )
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let boundaries: Vec<String> = statement
                    .query_map([&at], |r| r.get(0))
                    .and_then(Iterator::collect)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if boundaries.is_empty() {
                    return Ok("boundary: none ahead".into());
                }
                let target = &boundaries[boundary.index(boundaries.len())];
                let target = timestamp::parse(target)
                    .ok_or_else(|| TestCaseError::fail(format!("stored time {target}")))?;
                self.app.clock.advance(target - now);
                prop_assert_eq!(self.now(), target);
                format!("boundary {}", timestamp::format(target))
            }
            Op::Program {
                earn_points,
                pending_days,
                expiry,
                min_redeem,
            } => {
                let expiry_policy = expiry;
                let expiry = match expiry {
                    Expiry::DaysAfterEarn(days) => {
                        json!({"policy": "days_after_earn", "days": days})
                    }
                    Expiry::EndOfMonthAfter(months) => {
                        json!({"policy": "end_of_month_after", "months": months})
                    }
                    Expiry::Never => json!({"policy": "never"}),
                };
                let response = self.app.send_json(
                    "PUT",
                    POINTS_ADMIN_KEY,
                    "/v1/points/program",
                    &json!({
                        "earn_rate": {"points": earn_points, "per_minor": 100},
                        "pending_days": pending_days,
                        "expiry": expiry,
                        "min_redeem": min_redeem,
                    }),
                );
                // A pending period that reaches the shortest possible
                // expiry would make points that are never usable: refused.
                let shortest_life = match expiry_policy {
                    Expiry::DaysAfterEarn(days) => u64::from(*days),
                    Expiry::EndOfMonthAfter(months) => u64::from(*months) * 28,
                    Expiry::Never => u64::MAX,
                };
                if *pending_days > 0 && u64::from(*pending_days) >= shortest_life {
                    status(&response, &[422], "program with pending beyond expiry")?;
                    return Ok("program refused".to_owned());
                }
                status(&response, &[200], "program")?;
                self.min_redeem = i64::from(*min_redeem);
                format!("program {}", response.json()["version"])
            }
            Op::ExpireDue => {
                let response = self.app.send_json(
                    "POST",
                    POINTS_ADMIN_KEY,
                    "/v1/points/expire-due",
                    &json!({}),
                );
                status(&response, &[200], "expire-due")?;
                let now = timestamp::format(self.now());
                let left: i64 = self
                    .app
                    .db()
                    .query_row(
                        "SELECT count(*) FROM points_lots WHERE remaining > 0 AND expires_at <= ?1",
                        [&now],
                        |r| r.get(0),
                    )
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(left, 0, "expire-due leaves no expired lot with points");
                format!("expire-due {}", response.json()["expired_lots"])
            }
        })
    }

    /// Earn entries in ledger order: (id, points).
    fn earns(&self) -> Checked<Vec<(String, i64)>> {
        let db = self.app.db();
        let mut statement = db
            .prepare("SELECT id, points FROM points_entries WHERE kind = 'earn' ORDER BY id")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| TestCaseError::fail(e.to_string()))
    }

    /// A contact's entries and lots, for a failure message.
    fn dump(&self, contact: usize) -> String {
        let db = self.app.db();
        let id = &self.contacts[contact];
        let mut out = String::new();
        let mut entries = db
            .prepare(
                "SELECT kind, points, balance_after, reason FROM points_entries
                 WHERE contact_id = ?1 ORDER BY id",
            )
            .expect("entries");
        for row in entries
            .query_map([id], |r| {
                Ok(format!(
                    "  entry {} {} -> {} ({})\n",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?.unwrap_or_default()
                ))
            })
            .expect("entries")
            .flatten()
        {
            out.push_str(&row);
        }
        let mut lots = db
            .prepare(
                "SELECT original, remaining, available_at, expires_at FROM points_lots
                 WHERE contact_id = ?1 ORDER BY id",
            )
            .expect("lots");
        for row in lots
            .query_map([id], |r| {
                Ok(format!(
                    "  lot {}/{} available {} expires {}\n",
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?
                        .unwrap_or_else(|| "never".into())
                ))
            })
            .expect("lots")
            .flatten()
        {
            out.push_str(&row);
        }
        let account: Option<(i64, i64)> = db
            .query_row(
                "SELECT balance, debt FROM points_accounts WHERE contact_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .expect("account");
        out.push_str(&format!("  account (balance, debt): {account:?}\n"));
        out
    }

    /// Every invariant, for every contact, at the host's current time.
    fn check(&self) -> Checked {
        let db = self.app.db();
        let now = timestamp::format(self.now());
        let fail = |e: rusqlite::Error| TestCaseError::fail(e.to_string());
        for (index, id) in self.contacts.iter().enumerate() {
            let context = || format!("contact {index} at {now}:\n{}", self.dump(index));
            let entries: i64 = db
                .query_row(
                    "SELECT COALESCE(SUM(points), 0) FROM points_entries WHERE contact_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(fail)?;
            let (lots, bad_lots): (i64, i64) = db
                .query_row(
                    "SELECT COALESCE(SUM(remaining), 0),
                            COALESCE(SUM(remaining < 0 OR remaining > original), 0)
                     FROM points_lots WHERE contact_id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(fail)?;
            let (balance, debt) = db
                .query_row(
                    "SELECT balance, debt FROM points_accounts WHERE contact_id = ?1",
                    [id],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()
                .map_err(fail)?
                .unwrap_or((0, 0));
            let available: i64 = db
                .query_row(
                    "SELECT COALESCE(SUM(remaining), 0) FROM points_lots
                     WHERE contact_id = ?1 AND available_at <= ?2
                       AND (expires_at IS NULL OR ?2 < expires_at)",
                    [id, &now],
                    |r| r.get(0),
                )
                .map_err(fail)?;
            let unexpired_with_points: i64 = db
                .query_row(
                    "SELECT count(*) FROM points_lots
                     WHERE contact_id = ?1 AND remaining > 0 AND (expires_at IS NULL OR expires_at > ?2)",
                    [id, &now],
                    |r| r.get(0),
                )
                .map_err(fail)?;
            // What redemptions drew from a lot and have not given back
            // still fits in it: a restore can never overfill a lot.
            let overdrawn: i64 = db
                .query_row(
                    "SELECT count(*) FROM points_lots l
                     WHERE l.contact_id = ?1 AND l.remaining + COALESCE(
                         (SELECT SUM(a.points - a.restored) FROM points_allocations a WHERE a.lot_id = l.id), 0)
                       > l.original",
                    [id],
                    |r| r.get(0),
                )
                .map_err(fail)?;
            let mut running = 0;
            let mut statement = db
                .prepare(
                    "SELECT points, balance_after FROM points_entries WHERE contact_id = ?1 ORDER BY id",
                )
                .map_err(fail)?;
            let rows: Vec<(i64, i64)> = statement
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(fail)?;
            for (position, (points, balance_after)) in rows.iter().enumerate() {
                running += points;
                prop_assert_eq!(
                    *balance_after,
                    running,
                    "balance_after of entry {} is the running sum; {}",
                    position,
                    context()
                );
            }

            prop_assert_eq!(
                entries,
                lots - debt,
                "sum(entries) = sum(lots.remaining) - debt; {}",
                context()
            );
            prop_assert_eq!(bad_lots, 0, "0 <= remaining <= original; {}", context());
            prop_assert_eq!(overdrawn, 0, "allocations fit their lots; {}", context());
            prop_assert_eq!(
                balance,
                entries,
                "account balance = sum(entries); {}",
                context()
            );
            prop_assert!(debt >= 0, "debt >= 0; {}", context());
            prop_assert!(
                debt == 0 || unexpired_with_points == 0,
                "debt {} beside {} unexpired lots with points; {}",
                debt,
                unexpired_with_points,
                context()
            );

            let endpoint = self.balance(index)?;
            prop_assert_eq!(
                &endpoint["ledger_balance"],
                &json!(entries),
                "ledger_balance = sum(entries); {}",
                context()
            );
            prop_assert_eq!(
                &endpoint["available"],
                &json!(available),
                "available = lots with available_at <= now < expires_at; {}",
                context()
            );
            prop_assert!(available >= 0, "available >= 0; {}", context());
            prop_assert_eq!(&endpoint["debt"], &json!(debt), "debt; {}", context());
            if debt > 0 {
                prop_assert!(
                    endpoint["available"] == 0 && endpoint["pending"] == 0,
                    "no points beside debt: {}; {}",
                    endpoint,
                    context()
                );
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Checked<Snapshot> {
        let db = self.app.db();
        let fail = |e: rusqlite::Error| TestCaseError::fail(e.to_string());
        let mut snapshot = Snapshot {
            entries: Vec::new(),
            lots: Vec::new(),
            accounts: Vec::new(),
        };
        for id in &self.contacts {
            let mut statement = db
                .prepare(
                    "SELECT kind, points, balance_after, reason FROM points_entries
                     WHERE contact_id = ?1 ORDER BY id",
                )
                .map_err(fail)?;
            snapshot.entries.push(
                statement
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(Iterator::collect)
                    .map_err(fail)?,
            );
            let mut statement = db
                .prepare(
                    "SELECT original, remaining, available_at, expires_at FROM points_lots
                     WHERE contact_id = ?1 ORDER BY id",
                )
                .map_err(fail)?;
            snapshot.lots.push(
                statement
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(Iterator::collect)
                    .map_err(fail)?,
            );
            snapshot.accounts.push(
                db.query_row(
                    "SELECT balance, debt, earned, redeemed, expired, reversed, adjusted
                     FROM points_accounts WHERE contact_id = ?1",
                    [id],
                    |r| {
                        Ok([
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ])
                    },
                )
                .optional()
                .map_err(fail)?,
            );
        }
        Ok(snapshot)
    }
}

/// Where two runs' per-contact lists first differ.
fn difference<T: PartialEq + std::fmt::Debug>(
    what: &str,
    first: &[Vec<T>],
    replay: &[Vec<T>],
) -> Option<String> {
    first
        .iter()
        .zip(replay)
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(contact, (a, b))| {
            let at = a
                .iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            format!(
                "{what} of contact {contact} differ from #{at}: first run {:?}, replay {:?}",
                &a[at..],
                &b[at..]
            )
        })
}

/// Plays `case` on a fresh host, checking the invariants after every step.
fn play(case: &Case) -> Checked<(Vec<String>, Snapshot)> {
    let mut run = Run::new(case.contacts);
    run.check()?;
    for (number, op) in case.ops.iter().enumerate() {
        let outcome = run
            .step(op)
            .map_err(|e| TestCaseError::fail(format!("step {number} {op:?} failed: {e}")))?;
        run.check().map_err(|e| {
            TestCaseError::fail(format!(
                "after step {number} {op:?} ({outcome}), steps so far {:?}: {e}",
                run.outcomes
            ))
        })?;
        run.outcomes.push(outcome);
    }
    let snapshot = run.snapshot()?;
    Ok((run.outcomes, snapshot))
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 24 by default; `PROPTEST_CASES=500` for a deeper run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        // Failures print the shrunk case; no regression file is written
        // next to the suite.
        failure_persistence: None,
        max_shrink_iters: 1024,
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_invariants_hold_after_every_step_and_a_replay_gives_the_same_ledger(case in case()) {
        if skip_under_spin("needs the manual clock") {
            return Ok(());
        }
        let (outcomes, ledger) = play(&case)?;
        let (replayed_outcomes, replayed_ledger) = play(&case)?;
        prop_assert_eq!(outcomes, replayed_outcomes, "the replay answered differently");
        let differences: Vec<String> = [
            difference("entries (kind, points, balance_after, reason)", &ledger.entries, &replayed_ledger.entries),
            difference("lots (original, remaining, available_at, expires_at)", &ledger.lots, &replayed_ledger.lots),
        ]
        .into_iter()
        .flatten()
        .collect();
        prop_assert!(differences.is_empty(), "the replay wrote a different ledger: {:?}", differences);
        prop_assert_eq!(ledger.accounts, replayed_ledger.accounts, "the replay's accounts differ");
    }
}
