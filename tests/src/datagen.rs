//! A deterministic generator of a realistic shop, for benches: contacts
//! with their tags and email consents, orders with lines and refunds, the
//! counters those orders give each contact, and the loyalty-points ledger
//! they left, written straight into Kizuna's schema in a migrated database
//! file. The same `Spec` (sizes, seed, `now`) always writes the same rows.
//!
//! The shop sells Japanese tea, sweets and tableware (about a hundred
//! SKUs in eight categories; a few best sellers take most lines):
//!
//! - Contacts were created over the last four years, their ids time-based
//!   (UUID v7 layout) in creation order. 93 % have an email, 70 % a phone
//!   (all contacts without an email have one), all a Japanese name.
//!   Sources: the shop's webhook, sign-up forms with UTM fields, imports.
//! - About 60 % are customers. Of those, 55 % ordered once; the others
//!   share the remaining orders by a heavy-tailed weight (a few loyal
//!   customers order dozens of times). A customer orders between a first
//!   order and a last one; about half of the repeat customers are still
//!   active (last order within the last two months). Orders were placed
//!   over the last three years, have 1 to 4 lines (quantities 1 to 3,
//!   tax-included prices, 8 % reduced rate for food, 10 % otherwise),
//!   free shipping from 5,000 yen, sometimes a 500-yen coupon. 1.2 % were
//!   cancelled before payment, 0.8 % fully and 0.6 % partly refunded (with
//!   their `refunds` rows). Order ids are time-based in placing order.
//! - Contact counters are what `refresh_contact` derives from the paid,
//!   uncancelled, not fully refunded orders: `order_count`,
//!   `total_spent_minor` (net of refunds), average, first and last order,
//!   lifecycle stage.
//! - Tags: each of [`TAGS`] is on its share of contacts (0.1 % to 8 %),
//!   independently. Email consents: 45 % of contacts with an email granted
//!   one (by form, or at checkout), 8 % of those withdrew it later.
//! - Points: the default program (1 point per 100 yen of subtotal net of
//!   points used, available at once, valid 365 days) started 400 days
//!   ago; orders since then earn. Each customer's history is replayed in
//!   time order as Kizuna's ledger would have written it: some paid orders
//!   spend points first (a `redeem` with its allocations, soonest-expiring
//!   lots first, and the order's `points_used`), refunds take earned
//!   points back (`reverse`, from the earn's lot first, the rest as debt
//!   that later earns pay off), lots past their expiry are closed by an
//!   `expire` entry (the hourly sweep, or the contact's next event).
//!   Entries carry their per-contact `seq` and `balance_after`, accounts
//!   their lifetime totals, so `sum(entries) = sum(lots.remaining) - debt`
//!   holds for every contact ([`verify`] checks it).
//!
//! Not generated: search terms, timeline entries, webhook logs, external
//! ids, erased contacts.
//!
//! Everything is planned in memory first (under 1 GiB at a million
//! contacts), then inserted table by table in id order, with cached
//! prepared statements, in transactions of [`BATCH_ROWS`] rows, on one
//! connection with `synchronous = OFF` and a 1 GiB page cache (that
//! connection only). While it loads, the file has no rollback journal
//! (`journal_mode = OFF`, so every page is written once instead of to the
//! WAL and then again by checkpoints); it is switched back to WAL, as the
//! migration left it, before the connection closes, then checkpointed and
//! synced. The secondary indexes are kept and filled as rows arrive, as
//! in a shop that grew over years. At the default bench size (a million
//! contacts, three million orders, about 14 million rows) loading takes
//! under three minutes on two cores, bound by SQLite's B-tree inserts.

use crate::bench::{settle, uuid_v7_like};
use anyhow::ensure;
use kizuna::timestamp;
use rusqlite::{Connection, params};
use std::path::Path;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Contacts were created over the last four years.
const CONTACT_SPAN_MS: i64 = 4 * 365 * DAY_MS;
/// Orders were placed over the last three years.
const ORDER_SPAN_MS: i64 = 3 * 365 * DAY_MS;
/// The points program started this long ago.
const POINTS_SPAN_MS: i64 = 400 * DAY_MS;
/// The default program's validity.
const VALIDITY_MS: i64 = 365 * DAY_MS;
/// Rows per transaction while loading.
pub const BATCH_ROWS: u64 = 1_000_000;

/// Tags and the share of contacts (per mille) that carry each.
pub const TAGS: &[(&str, u64)] = &[
    ("newsletter", 80),
    ("line_friend", 60),
    ("sample_request", 45),
    ("gift_buyer", 40),
    ("spring_campaign_2026", 35),
    ("review_writer", 25),
    ("subscription", 20),
    ("vip_club", 12),
    ("wholesale", 5),
    ("staff", 1),
];

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub contacts: u64,
    pub orders: u64,
    pub seed: u64,
    /// The moment the data ends: every time written is before it.
    pub now: OffsetDateTime,
}

/// What was written, and how long planning and writing took.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub contacts: u64,
    pub customers: u64,
    pub tags: u64,
    pub consents: u64,
    pub orders: u64,
    pub lines: u64,
    pub refunds: u64,
    pub entries: u64,
    pub lots: u64,
    pub allocations: u64,
    pub accounts: u64,
    pub planned: Duration,
    pub written: Duration,
}

impl Generated {
    pub fn rows(&self) -> u64 {
        self.contacts
            + self.tags
            + self.consents
            + self.orders
            + self.lines
            + self.refunds
            + self.entries
            + self.lots
            + self.allocations
            + self.accounts
    }
}

/// A seeded xorshift64* generator (state seeded through SplitMix64), so
/// every stream is reproducible without a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// An independent stream `n` of `seed`.
    pub fn stream(seed: u64, n: u64) -> Rng {
        Rng::new(seed ^ n.wrapping_mul(0xd6e8_feb8_6659_fd93))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    pub fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }

    /// Uniform in `lo..hi` (or `lo` when the range is empty).
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below((hi - lo) as u64) as i64
        }
    }

    /// One of `items` by weight.
    fn weighted<T: Copy>(&mut self, items: &[(T, u64)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(total);
        for (item, weight) in items {
            if pick < *weight {
                return *item;
            }
            pick -= weight;
        }
        items[items.len() - 1].0
    }
}

/// Streams of the generator, one per planning step.
const CONTACT_STREAM: u64 = 1;
const ORDER_STREAM: u64 = 2;
const LEDGER_STREAM: u64 = 3;
const CATALOG_STREAM: u64 = 4;
/// Per-contact streams (identity, tags, consents) start here.
const IDENTITY_STREAM: u64 = 1 << 32;

struct Category {
    name: &'static str,
    code: &'static str,
    items: &'static [&'static str],
    variants: &'static [&'static str],
    /// Tax-included unit prices, yen.
    price: (i64, i64),
    tax_percent: i64,
}

const CATEGORIES: &[Category] = &[
    Category {
        name: "tea",
        code: "TEA",
        items: &[
            "Sencha",
            "Gyokuro",
            "Matcha",
            "Hojicha",
            "Genmaicha",
            "Kabusecha",
        ],
        variants: &["50g", "100g", "200g", "tea bags x20"],
        price: (600, 4_800),
        tax_percent: 8,
    },
    Category {
        name: "coffee",
        code: "COF",
        items: &["House blend", "Kyoto roast", "Decaf", "Drip bags"],
        variants: &["100g", "200g", "500g"],
        price: (900, 3_600),
        tax_percent: 8,
    },
    Category {
        name: "sweets",
        code: "SWT",
        items: &["Yokan", "Monaka", "Dorayaki", "Warabi mochi", "Castella"],
        variants: &["single", "box of 6", "box of 12"],
        price: (300, 3_200),
        tax_percent: 8,
    },
    Category {
        name: "snacks",
        code: "SNK",
        items: &["Senbei", "Arare", "Karinto", "Roasted beans"],
        variants: &["small", "family pack"],
        price: (250, 1_200),
        tax_percent: 8,
    },
    Category {
        name: "noodles",
        code: "NDL",
        items: &["Soba", "Udon", "Somen", "Ramen"],
        variants: &["2 servings", "5 servings"],
        price: (400, 1_800),
        tax_percent: 8,
    },
    Category {
        name: "seasoning",
        code: "SSN",
        items: &[
            "Soy sauce",
            "White miso",
            "Red miso",
            "Dashi pack",
            "Yuzu ponzu",
            "Mirin",
        ],
        variants: &["300ml", "1l"],
        price: (350, 2_200),
        tax_percent: 8,
    },
    Category {
        name: "tableware",
        code: "TBW",
        items: &[
            "Yunomi",
            "Kyusu teapot",
            "Matcha bowl",
            "Chopsticks",
            "Tea caddy",
        ],
        variants: &["Arita", "Mino", "Hagi"],
        price: (1_500, 12_000),
        tax_percent: 10,
    },
    Category {
        name: "gift",
        code: "GFT",
        items: &["Tea gift set", "Sweets assortment", "Seasoning set"],
        variants: &["S", "M", "L"],
        price: (3_000, 10_000),
        tax_percent: 10,
    },
];

/// One SKU.
pub struct Product {
    pub sku: String,
    pub name: String,
    pub category: &'static str,
    /// Tax included, yen.
    pub price: i64,
    pub tax_percent: i64,
}

/// The catalog, best sellers first.
fn catalog(seed: u64) -> Vec<Product> {
    let mut rng = Rng::stream(seed, CATALOG_STREAM);
    let mut products = Vec::new();
    for category in CATEGORIES {
        let mut n = 0;
        for item in category.items {
            for variant in category.variants {
                n += 1;
                let (lo, hi) = category.price;
                products.push(Product {
                    sku: format!("{}-{n:03}", category.code),
                    name: format!("{item} {variant}"),
                    category: category.name,
                    price: rng.between(lo / 10, hi / 10 + 1) * 10,
                    tax_percent: category.tax_percent,
                });
            }
        }
    }
    // Fisher-Yates: popularity does not follow the category.
    for i in (1..products.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        products.swap(i, j);
    }
    products
}

/// A product index, the first ones far more often (quadratic skew).
fn pick_product(rng: &mut Rng, products: usize) -> u16 {
    let u = rng.unit();
    ((u * u * products as f64) as usize).min(products - 1) as u16
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Paid,
    Cancelled,
    Refunded,
    PartiallyRefunded,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Paid => "paid",
            Status::Cancelled => "cancelled",
            Status::Refunded => "refunded",
            Status::PartiallyRefunded => "partially_refunded",
        }
    }
}

#[derive(Clone, Copy)]
struct LinePlan {
    product: u16,
    quantity: u8,
}

struct OrderPlan {
    placed: i64,
    contact: u32,
    lines: [LinePlan; 4],
    line_count: u8,
    status: Status,
    coupon: bool,
    /// When the refund was made (refunded orders only).
    refunded_at: i64,
    points_used: i64,
}

impl OrderPlan {
    fn lines(&self) -> &[LinePlan] {
        &self.lines[..usize::from(self.line_count)]
    }
    fn subtotal(&self, products: &[Product]) -> i64 {
        self.lines()
            .iter()
            .map(|l| products[usize::from(l.product)].price * i64::from(l.quantity))
            .sum()
    }
    fn discount(&self) -> i64 {
        if self.coupon { 500 } else { 0 }
    }
    fn shipping(&self, products: &[Product]) -> i64 {
        if self.subtotal(products) >= 5_000 {
            0
        } else {
            650
        }
    }
    fn total(&self, products: &[Product]) -> i64 {
        self.subtotal(products) + self.shipping(products) - self.discount() - self.points_used
    }
    fn refunded(&self, products: &[Product]) -> i64 {
        let total = self.total(products);
        match self.status {
            Status::Refunded => total,
            Status::PartiallyRefunded => {
                let first = self.lines[0];
                let line = products[usize::from(first.product)].price * i64::from(first.quantity);
                if self.line_count > 1 {
                    line.min(total - 1)
                } else {
                    total / 2
                }
            }
            Status::Paid | Status::Cancelled => 0,
        }
    }
    /// Counted as the contact counters count: paid, not cancelled, not
    /// fully refunded.
    fn counted(&self) -> bool {
        matches!(self.status, Status::Paid | Status::PartiallyRefunded)
    }
}

struct ContactPlan {
    created: i64,
    customer: bool,
    /// 0 for one-time buyers.
    weight: f64,
    first: i64,
    last: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Earn,
    Redeem,
    Expire,
    Reverse,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Earn => "earn",
            Kind::Redeem => "redeem",
            Kind::Expire => "expire",
            Kind::Reverse => "reverse",
        }
    }
}

const NONE: u32 = u32::MAX;

struct EntryRow {
    at: i64,
    contact: u32,
    kind: Kind,
    points: i64,
    seq: u32,
    balance_after: i64,
    /// Earn and reverse: the order; redeem: the order it paid for.
    order: u32,
    /// Expire: the lot's earn; reverse: the earn taken back.
    related: u32,
}

struct LotRow {
    at: i64,
    contact: u32,
    entry: u32,
    original: i64,
    remaining: i64,
}

#[derive(Default)]
struct Account {
    contact: u32,
    balance: i64,
    seq: u32,
    debt: i64,
    earned: i64,
    redeemed: i64,
    expired: i64,
    reversed: i64,
    /// Lots with points left, in spending order (soonest-expiring first:
    /// every lot is valid the same time, so oldest first).
    open: Vec<u32>,
}

/// The ledger of every contact, replayed in memory.
#[derive(Default)]
struct Ledger {
    entries: Vec<EntryRow>,
    lots: Vec<LotRow>,
    allocations: Vec<(u32, u32, i64)>,
    accounts: Vec<Account>,
}

impl Ledger {
    fn append(
        &mut self,
        account: &mut Account,
        at: i64,
        kind: Kind,
        points: i64,
        order: u32,
        related: u32,
    ) -> u32 {
        account.balance += points;
        account.seq += 1;
        match kind {
            Kind::Earn => account.earned += points,
            Kind::Redeem => account.redeemed -= points,
            Kind::Expire => account.expired -= points,
            Kind::Reverse => account.reversed -= points,
        }
        self.entries.push(EntryRow {
            at,
            contact: account.contact,
            kind,
            points,
            seq: account.seq,
            balance_after: account.balance,
            order,
            related,
        });
        (self.entries.len() - 1) as u32
    }

    fn expires(&self, lot: u32) -> i64 {
        self.lots[lot as usize].at + VALIDITY_MS
    }

    /// Closes the lots expired by `at`: as the contact's event at `at`
    /// does, or the hourly sweep before it.
    fn expire_due(&mut self, account: &mut Account, at: i64) {
        while let Some(&lot) = account.open.first() {
            let expires = self.expires(lot);
            if expires > at {
                break;
            }
            account.open.remove(0);
            let remaining = std::mem::take(&mut self.lots[lot as usize].remaining);
            let earn = self.lots[lot as usize].entry;
            self.append(
                account,
                (expires + HOUR_MS).min(at),
                Kind::Expire,
                -remaining,
                NONE,
                earn,
            );
        }
    }

    /// Takes up to `points` from the open lots, `first` first; returns
    /// what was taken from each and drops emptied lots.
    fn take(&mut self, account: &mut Account, points: i64, first: Option<u32>) -> Vec<(u32, i64)> {
        let mut order = account.open.clone();
        if let Some(first) = first
            && let Some(index) = order.iter().position(|&l| l == first)
        {
            order.remove(index);
            order.insert(0, first);
        }
        let mut missing = points;
        let mut taken = Vec::new();
        for lot in order {
            if missing == 0 {
                break;
            }
            let remaining = &mut self.lots[lot as usize].remaining;
            let take = (*remaining).min(missing);
            *remaining -= take;
            missing -= take;
            taken.push((lot, take));
        }
        account
            .open
            .retain(|&l| self.lots[l as usize].remaining > 0);
        taken
    }

    fn available(&self, account: &Account) -> i64 {
        account
            .open
            .iter()
            .map(|&l| self.lots[l as usize].remaining)
            .sum()
    }

    /// Returns the entry and its lot.
    fn earn(&mut self, account: &mut Account, at: i64, points: i64, order: u32) -> (u32, u32) {
        let entry = self.append(account, at, Kind::Earn, points, order, NONE);
        self.lots.push(LotRow {
            at,
            contact: account.contact,
            entry,
            original: points,
            remaining: points,
        });
        let lot = (self.lots.len() - 1) as u32;
        account.open.push(lot);
        // Debt is paid first.
        if account.debt > 0 {
            let debt = account.debt;
            let paid: i64 = self.take(account, debt, None).iter().map(|(_, p)| p).sum();
            account.debt -= paid;
        }
        (entry, lot)
    }

    fn redeem(&mut self, account: &mut Account, at: i64, points: i64, order: u32) {
        let entry = self.append(account, at, Kind::Redeem, -points, order, NONE);
        for (lot, take) in self.take(account, points, None) {
            self.allocations.push((entry, lot, take));
        }
    }

    /// Takes `points` of the earn `earn` (whose lot is `lot`) back.
    fn reverse(
        &mut self,
        account: &mut Account,
        at: i64,
        points: i64,
        order: u32,
        earn: u32,
        lot: u32,
    ) {
        self.append(account, at, Kind::Reverse, -points, order, earn);
        let taken: i64 = self
            .take(account, points, Some(lot))
            .iter()
            .map(|(_, p)| p)
            .sum();
        account.debt += points - taken;
    }
}

/// Everything to write, planned in memory.
struct Plan {
    products: Vec<Product>,
    contacts: Vec<ContactPlan>,
    /// By time placed.
    orders: Vec<OrderPlan>,
    ledger: Ledger,
}

fn ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Kizuna's text form of a time given in unix milliseconds.
fn stamp(ms: i64) -> String {
    timestamp::format(
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("a time within range"),
    )
}

fn plan_contacts(spec: &Spec, now: i64) -> Vec<ContactPlan> {
    let mut rng = Rng::stream(spec.seed, CONTACT_STREAM);
    let n = spec.contacts.max(1) as i128;
    let span = i128::from(CONTACT_SPAN_MS - DAY_MS);
    let step = (span / n).max(1) as i64;
    let order_start = now - ORDER_SPAN_MS;
    (0..spec.contacts)
        .map(|i| {
            let created =
                now - CONTACT_SPAN_MS + (span * i128::from(i) / n) as i64 + rng.between(0, step);
            let customer = rng.per_mille(600);
            let repeat = rng.per_mille(450);
            let weight = if repeat {
                (1.0 - rng.unit()).powf(-0.5).min(30.0)
            } else {
                0.0
            };
            let latest = now - 2 * HOUR_MS;
            let first = (created.max(order_start) + rng.between(0, 21 * DAY_MS)).min(latest);
            let (first, last) = if !repeat {
                let at = first + ((latest - first) as f64 * rng.unit()) as i64;
                (at, at)
            } else if rng.per_mille(450) {
                (first, (now - rng.between(HOUR_MS, 60 * DAY_MS)).max(first))
            } else {
                (first, first + ((latest - first) as f64 * rng.unit()) as i64)
            };
            ContactPlan {
                created,
                customer,
                weight,
                first,
                last,
            }
        })
        .collect()
}

/// How many orders each contact placed: one per customer, the rest by
/// weight among the repeat customers.
fn order_counts(spec: &Spec, contacts: &mut [ContactPlan], rng: &mut Rng) -> Vec<u32> {
    let mut counts = vec![0_u32; contacts.len()];
    let mut left = spec.orders;
    for (contact, count) in contacts.iter_mut().zip(counts.iter_mut()) {
        if contact.customer {
            if left == 0 {
                contact.customer = false;
            } else {
                *count = 1;
                left -= 1;
            }
        }
    }
    let mut repeaters: Vec<(usize, f64)> = contacts
        .iter()
        .enumerate()
        .filter(|(_, c)| c.customer && c.weight > 0.0)
        .map(|(i, c)| (i, c.weight))
        .collect();
    if repeaters.is_empty() {
        repeaters = contacts
            .iter()
            .enumerate()
            .filter(|(_, c)| c.customer)
            .map(|(i, _)| (i, 1.0))
            .collect();
    }
    if repeaters.is_empty() {
        return counts;
    }
    let mut cumulative = Vec::with_capacity(repeaters.len());
    let mut total = 0.0;
    for (_, weight) in &repeaters {
        total += weight;
        cumulative.push(total);
    }
    for _ in 0..left {
        let target = rng.unit() * total;
        let index = cumulative
            .partition_point(|&c| c <= target)
            .min(repeaters.len() - 1);
        counts[repeaters[index].0] += 1;
    }
    counts
}

fn plan_orders(
    spec: &Spec,
    now: i64,
    contacts: &mut [ContactPlan],
    products: &[Product],
) -> Vec<OrderPlan> {
    let mut rng = Rng::stream(spec.seed, ORDER_STREAM);
    let counts = order_counts(spec, contacts, &mut rng);
    let mut orders = Vec::with_capacity(spec.orders as usize);
    for (index, (contact, &count)) in contacts.iter().zip(&counts).enumerate() {
        for n in 0..count {
            let placed = if n == 0 {
                contact.first
            } else {
                rng.between(contact.first, contact.last + 1)
            };
            let line_count = rng.weighted(&[(1_u8, 45), (2, 30), (3, 17), (4, 8)]);
            let mut lines = [LinePlan {
                product: 0,
                quantity: 1,
            }; 4];
            for l in 0..usize::from(line_count) {
                // Distinct products on one order, mostly.
                let mut product = pick_product(&mut rng, products.len());
                for _ in 0..3 {
                    if !lines[..l].iter().any(|x| x.product == product) {
                        break;
                    }
                    product = pick_product(&mut rng, products.len());
                }
                lines[l] = LinePlan {
                    product,
                    quantity: rng.weighted(&[(1_u8, 78), (2, 17), (3, 5)]),
                };
            }
            let age = now - placed;
            let mut status = rng.weighted(&[
                (Status::Paid, 974),
                (Status::Cancelled, 12),
                (Status::Refunded, 8),
                (Status::PartiallyRefunded, 6),
            ]);
            if age < 3 * DAY_MS && matches!(status, Status::Refunded | Status::PartiallyRefunded) {
                status = Status::Paid;
            }
            let refunded_at = match status {
                Status::Refunded | Status::PartiallyRefunded => {
                    placed + rng.between(DAY_MS, (14 * DAY_MS).min(age - HOUR_MS))
                }
                _ => 0,
            };
            let mut order = OrderPlan {
                placed,
                contact: index as u32,
                lines,
                line_count,
                status,
                coupon: false,
                refunded_at,
                points_used: 0,
            };
            // A 500-yen coupon, from 3,000 yen of goods.
            order.coupon = rng.per_mille(60) && order.subtotal(products) >= 3_000;
            orders.push(order);
        }
    }
    orders.sort_by_key(|o| (o.placed, o.contact));
    orders
}

/// Replays every customer's points history in time order.
fn plan_ledger(
    spec: &Spec,
    now: i64,
    contacts: &[ContactPlan],
    orders: &mut [OrderPlan],
    products: &[Product],
) -> Ledger {
    let mut rng = Rng::stream(spec.seed, LEDGER_STREAM);
    let program_start = now - POINTS_SPAN_MS;
    // Orders per contact, in time order.
    let mut offsets = vec![0_u32; contacts.len() + 1];
    for order in orders.iter() {
        offsets[order.contact as usize + 1] += 1;
    }
    for i in 1..offsets.len() {
        offsets[i] += offsets[i - 1];
    }
    let mut fill = offsets.clone();
    let mut by_contact = vec![0_u32; orders.len()];
    for (k, order) in orders.iter().enumerate() {
        let slot = &mut fill[order.contact as usize];
        by_contact[*slot as usize] = k as u32;
        *slot += 1;
    }
    let mut ledger = Ledger::default();
    let mut earn_of: Vec<(u32, (u32, u32))> = Vec::new();
    let mut events: Vec<(i64, u8, u32)> = Vec::new();
    for contact in 0..contacts.len() {
        let mine = &by_contact[offsets[contact] as usize..offsets[contact + 1] as usize];
        events.clear();
        for &k in mine {
            let order = &orders[k as usize];
            if order.placed < program_start {
                continue;
            }
            events.push((order.placed, 0, k));
            if order.refunded_at > 0 {
                events.push((order.refunded_at, 1, k));
            }
        }
        if events.is_empty() {
            continue;
        }
        events.sort_unstable();
        earn_of.clear();
        let mut account = Account {
            contact: contact as u32,
            ..Account::default()
        };
        for &(at, event, k) in &events {
            ledger.expire_due(&mut account, at);
            let order = &mut orders[k as usize];
            if event == 0 {
                if order.status == Status::Cancelled {
                    continue;
                }
                let subtotal = order.subtotal(products);
                let payable = subtotal + order.shipping(products) - order.discount();
                let available = ledger.available(&account);
                if order.status == Status::Paid && available >= 500 && rng.per_mille(150) {
                    let points = available.min(payable / 2) / 10 * 10;
                    if points >= 100 {
                        order.points_used = points;
                        ledger.redeem(&mut account, at, points, k);
                    }
                }
                let points = (subtotal - order.points_used).max(0) / 100;
                if points > 0 {
                    earn_of.push((k, ledger.earn(&mut account, at, points, k)));
                }
            } else if let Some(&(_, (earn, lot))) = earn_of.iter().find(|(o, _)| *o == k) {
                let total = order.total(products);
                let refunded = order.refunded(products);
                let earned = ledger.entries[earn as usize].points;
                let keep = i128::from(earned) * i128::from((total - refunded).max(0))
                    / i128::from(total.max(1));
                let points = earned - keep as i64;
                if points > 0 {
                    ledger.reverse(&mut account, at, points, k, earn, lot);
                }
            }
        }
        // The hourly sweep closed what expired over an hour ago.
        ledger.expire_due(&mut account, now - HOUR_MS);
        // Kizuna opens an account with its first entry.
        if account.seq > 0 {
            account.open = Vec::new();
            ledger.accounts.push(account);
        }
    }
    ledger
}

fn plan(spec: &Spec) -> Plan {
    let now = ms(spec.now);
    let products = catalog(spec.seed);
    let mut contacts = plan_contacts(spec, now);
    let mut orders = plan_orders(spec, now, &mut contacts, &products);
    let ledger = plan_ledger(spec, now, &contacts, &mut orders, &products);
    Plan {
        products,
        contacts,
        orders,
        ledger,
    }
}

/// What `refresh_contact` derives from a contact's counted orders.
#[derive(Clone, Copy, Default)]
struct Counters {
    count: i64,
    spent: i64,
    first: Option<i64>,
    last: Option<i64>,
}

impl Counters {
    fn stage(&self) -> &'static str {
        match self.count {
            0 => "lead",
            1 => "customer",
            _ => "repeat",
        }
    }
}

const FAMILY: &[(&str, &str, &str)] = &[
    ("佐藤", "サトウ", "sato"),
    ("鈴木", "スズキ", "suzuki"),
    ("高橋", "タカハシ", "takahashi"),
    ("田中", "タナカ", "tanaka"),
    ("伊藤", "イトウ", "ito"),
    ("渡辺", "ワタナベ", "watanabe"),
    ("山本", "ヤマモト", "yamamoto"),
    ("中村", "ナカムラ", "nakamura"),
    ("小林", "コバヤシ", "kobayashi"),
    ("加藤", "カトウ", "kato"),
    ("吉田", "ヨシダ", "yoshida"),
    ("山田", "ヤマダ", "yamada"),
];

const GIVEN: &[(&str, &str, &str)] = &[
    ("花子", "ハナコ", "hanako"),
    ("太郎", "タロウ", "taro"),
    ("陽菜", "ヒナ", "hina"),
    ("蓮", "レン", "ren"),
    ("結衣", "ユイ", "yui"),
    ("大翔", "ヒロト", "hiroto"),
    ("美咲", "ミサキ", "misaki"),
    ("翔太", "ショウタ", "shota"),
    ("さくら", "サクラ", "sakura"),
    ("健", "ケン", "ken"),
];

const DOMAINS: &[(&str, u64)] = &[
    ("gmail.com", 30),
    ("yahoo.co.jp", 22),
    ("icloud.com", 14),
    ("docomo.ne.jp", 8),
    ("ezweb.ne.jp", 6),
    ("softbank.ne.jp", 5),
    ("outlook.jp", 5),
    ("hotmail.co.jp", 4),
    ("nifty.com", 3),
    ("example.co.jp", 3),
];

const PREFECTURES: &[(&str, &str)] = &[
    ("東京都", "渋谷区神南"),
    ("大阪府", "大阪市北区梅田"),
    ("神奈川県", "横浜市西区みなとみらい"),
    ("愛知県", "名古屋市中区栄"),
    ("福岡県", "福岡市中央区天神"),
    ("北海道", "札幌市中央区大通西"),
    ("京都府", "京都市下京区四条通"),
    ("埼玉県", "さいたま市大宮区桜木町"),
    ("静岡県", "静岡市葵区呉服町"),
    ("兵庫県", "神戸市中央区三宮町"),
];

const FORMS: &[&str] = &["newsletter-signup", "sample-request", "line-campaign"];
const UTM_SOURCES: &[&str] = &["google", "instagram", "line", "newsletter", "x"];
const UTM_MEDIUMS: &[&str] = &["cpc", "social", "social", "email", "social"];
const UTM_CAMPAIGNS: &[&str] = &[
    "shincha_2025",
    "gift_season_2025",
    "new_year_2026",
    "spring_sale_2026",
];

/// Rows are committed every [`BATCH_ROWS`] inserts.
struct Loader<'c> {
    connection: &'c Connection,
    pending: u64,
}

impl<'c> Loader<'c> {
    fn begin(connection: &'c Connection) -> rusqlite::Result<Loader<'c>> {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Loader {
            connection,
            pending: 0,
        })
    }

    fn insert(&mut self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<()> {
        self.connection.prepare_cached(sql)?.execute(params)?;
        self.pending += 1;
        if self.pending >= BATCH_ROWS {
            self.connection.execute_batch("COMMIT; BEGIN IMMEDIATE")?;
            self.pending = 0;
        }
        Ok(())
    }

    fn commit(self) -> rusqlite::Result<()> {
        self.connection.execute_batch("COMMIT")
    }
}

const INSERT_CONTACT: &str =
    "INSERT INTO contacts (id, email, phone, name, family_name, given_name,
     family_name_kana, given_name_kana, postal_code, address, birthday, attributes, lifecycle_stage,
     source, first_form_id, first_page, utm_source, utm_medium, utm_campaign, order_count,
     total_spent_minor, average_order_value_minor, first_order_at, last_order_at, created_at,
     created_by, updated_at, updated_by)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
     ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?26)";
const INSERT_TAG: &str =
    "INSERT INTO contact_tags (contact_id, tag, created_at, created_by) VALUES (?1, ?2, ?3, ?4)";
const INSERT_CONSENT: &str =
    "INSERT INTO consents (id, contact_id, channel, status, reason, form_id,
     page_url, text_version, ip_truncated, recorded_at, recorded_by)
 VALUES (?1, ?2, 'email', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_ORDER: &str = "INSERT INTO orders (id, source, external_id, contact_id, order_number,
     status, currency, subtotal_minor, shipping_minor, tax_minor, discount_minor, total_minor,
     points_used, refunded_minor, paid, cancelled, placed_at, paid_at, cancelled_at,
     source_updated_at, created_at, updated_at)
 VALUES (?1, 'shopify', ?2, ?3, ?4, ?5, 'JPY', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
     ?17, ?18, ?15, ?18)";
const INSERT_LINE: &str =
    "INSERT INTO order_lines (order_id, line_no, external_id, sku, product_name,
     category, quantity, unit_price_minor, line_total_minor, discount_minor, tax_minor)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)";
const INSERT_REFUND: &str = "INSERT INTO refunds (id, source, order_external_id, external_id,
     amount_minor, currency, reason, refunded_at, created_at)
 VALUES (?1, 'shopify', ?2, ?3, ?4, 'JPY', ?5, ?6, ?6)";
const INSERT_ENTRY: &str = "INSERT INTO points_entries (id, contact_id, kind, points, seq,
     balance_after, reason, order_id, order_ref, related_entry_id, program_version, created_at,
     created_by)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const INSERT_LOT: &str = "INSERT INTO points_lots (id, contact_id, entry_id, original, remaining,
     available_at, expires_at, created_at)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)";
const INSERT_ALLOCATION: &str =
    "INSERT INTO points_allocations (redeem_entry_id, lot_id, points) VALUES (?1, ?2, ?3)";
const INSERT_ACCOUNT: &str =
    "INSERT INTO points_accounts (contact_id, balance, entries, debt, earned,
     redeemed, expired, reversed, adjusted)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)";

/// Writes `plan` into the file, returning the row counts.
fn write(connection: &Connection, plan: &Plan, spec: &Spec, now: i64) -> anyhow::Result<Generated> {
    let Plan {
        products,
        contacts,
        orders,
        ledger,
    } = plan;
    let mut generated = Generated::default();
    let contact_id = |i: u32| uuid_v7_like(contacts[i as usize].created as u64, u64::from(i));
    let order_id = |k: u32| uuid_v7_like(orders[k as usize].placed as u64, u64::from(k));
    let external_id = |k: u32| format!("{}", 1_000_001 + u64::from(k));

    let mut counters = vec![Counters::default(); contacts.len()];
    for order in orders.iter().filter(|o| o.counted()) {
        let c = &mut counters[order.contact as usize];
        c.count += 1;
        c.spent += (order.total(products) - order.refunded(products)).max(0);
        c.first = Some(c.first.map_or(order.placed, |f| f.min(order.placed)));
        c.last = Some(c.last.map_or(order.placed, |l| l.max(order.placed)));
    }

    let mut loader = Loader::begin(connection)?;
    let mut consent_no = 0_u64;
    for (i, (contact, c)) in contacts.iter().zip(&counters).enumerate() {
        let mut rng = Rng::stream(spec.seed, IDENTITY_STREAM + i as u64);
        let id = contact_id(i as u32);
        let created = contact.created;
        let (family, family_kana, family_roman) = FAMILY[rng.below(FAMILY.len() as u64) as usize];
        let (given, given_kana, given_roman) = GIVEN[rng.below(GIVEN.len() as u64) as usize];
        let has_email = rng.per_mille(930);
        let email =
            has_email.then(|| format!("{given_roman}.{family_roman}{i}@{}", rng.weighted(DOMAINS)));
        let phone =
            (!has_email || rng.per_mille(700)).then(|| format!("+8190{:08}", i % 100_000_000));
        let (source, form) = if contact.customer {
            match rng.below(20) {
                0..15 => ("webhook:shopify".to_owned(), None),
                15..19 => {
                    let form = FORMS[rng.below(FORMS.len() as u64) as usize];
                    (format!("form:{form}"), Some(form))
                }
                _ => ("api:import".to_owned(), None),
            }
        } else if rng.per_mille(700) {
            let form = FORMS[rng.below(FORMS.len() as u64) as usize];
            (format!("form:{form}"), Some(form))
        } else {
            ("api:import".to_owned(), None)
        };
        let utm = form.filter(|_| rng.per_mille(600)).map(|_| {
            let s = rng.below(UTM_SOURCES.len() as u64) as usize;
            (
                UTM_SOURCES[s],
                UTM_MEDIUMS[s],
                UTM_CAMPAIGNS[rng.below(UTM_CAMPAIGNS.len() as u64) as usize],
            )
        });
        let attributes = match form {
            Some(_) if rng.per_mille(300) => {
                let tea = CATEGORIES[0].items[rng.below(6) as usize].to_ascii_lowercase();
                format!("{{\"favorite_tea\":\"{tea}\"}}")
            }
            _ => "{}".to_owned(),
        };
        let address = (contact.customer || rng.per_mille(300)).then(|| {
            let (prefecture, city) = PREFECTURES[rng.below(PREFECTURES.len() as u64) as usize];
            (
                format!("{:03}-{:04}", 100 + rng.below(900), rng.below(10_000)),
                format!(
                    "{prefecture}{city}{}-{}-{}",
                    1 + rng.below(5),
                    1 + rng.below(20),
                    1 + rng.below(30)
                ),
            )
        });
        let birthday = rng.per_mille(350).then(|| {
            format!(
                "{}-{:02}-{:02}",
                1950 + rng.below(56),
                1 + rng.below(12),
                1 + rng.below(28)
            )
        });
        let created_by = match source.as_str() {
            "api:import" => "key:import".to_owned(),
            other => other.to_owned(),
        };
        let updated = c.last.map_or(created, |l| l.max(created));
        loader.insert(
            INSERT_CONTACT,
            params![
                id,
                email,
                phone,
                format!("{family} {given}"),
                family,
                given,
                family_kana,
                given_kana,
                address.as_ref().map(|a| a.0.as_str()),
                address.as_ref().map(|a| a.1.as_str()),
                birthday,
                attributes,
                c.stage(),
                source,
                form,
                form.map(|f| format!("https://shop.example.jp/lp/{f}")),
                utm.map(|u| u.0),
                utm.map(|u| u.1),
                utm.map(|u| u.2),
                c.count,
                c.spent,
                if c.count > 0 { c.spent / c.count } else { 0 },
                c.first.map(stamp),
                c.last.map(stamp),
                stamp(created),
                created_by,
                stamp(updated),
            ],
        )?;
        generated.contacts += 1;
        generated.customers += u64::from(c.count > 0);
        for (tag, share) in TAGS {
            if rng.per_mille(*share) {
                let at = rng.between(created, now - MINUTE_MS);
                loader.insert(INSERT_TAG, params![id, tag, stamp(at), "key:marketing"])?;
                generated.tags += 1;
            }
        }
        if has_email && rng.per_mille(450) {
            let at = (created + rng.between(0, 10 * MINUTE_MS)).min(now - MINUTE_MS);
            let (reason, recorded_by) = match form {
                Some(f) => ("form", format!("form:{f}")),
                None => ("manual", "webhook:shopify".to_owned()),
            };
            consent_no += 1;
            loader.insert(
                INSERT_CONSENT,
                params![
                    uuid_v7_like(at as u64, consent_no),
                    id,
                    "granted",
                    reason,
                    form,
                    form.map(|f| format!("https://shop.example.jp/lp/{f}")),
                    form.map(|_| "2025-04"),
                    form.map(|_| "203.0.113.0"),
                    stamp(at),
                    recorded_by,
                ],
            )?;
            generated.consents += 1;
            if rng.per_mille(80) {
                let withdrawn = rng.between(at + MINUTE_MS, now - MINUTE_MS);
                consent_no += 1;
                loader.insert(
                    INSERT_CONSENT,
                    params![
                        uuid_v7_like(withdrawn as u64, consent_no),
                        id,
                        "withdrawn",
                        "unsubscribed",
                        None::<&str>,
                        None::<&str>,
                        None::<&str>,
                        None::<&str>,
                        stamp(withdrawn),
                        "unsubscribe",
                    ],
                )?;
                generated.consents += 1;
            }
        }
    }

    let mut refund_no = 0_u64;
    for (k, order) in orders.iter().enumerate() {
        let k = k as u32;
        let id = order_id(k);
        let external = external_id(k);
        let placed = stamp(order.placed);
        let total = order.total(products);
        let refunded = order.refunded(products);
        let cancelled = order.status == Status::Cancelled;
        let cancelled_at = order.placed + 2 * HOUR_MS;
        let updated = if order.refunded_at > 0 {
            order.refunded_at
        } else if cancelled {
            cancelled_at
        } else {
            order.placed
        };
        let tax: i64 = order
            .lines()
            .iter()
            .map(|l| {
                let p = &products[usize::from(l.product)];
                p.price * i64::from(l.quantity) * p.tax_percent / (100 + p.tax_percent)
            })
            .sum();
        loader.insert(
            INSERT_ORDER,
            params![
                id,
                external,
                contact_id(order.contact),
                format!("#{external}"),
                order.status.as_str(),
                order.subtotal(products),
                order.shipping(products),
                tax,
                order.discount(),
                total,
                order.points_used,
                refunded,
                !cancelled,
                cancelled,
                placed,
                (!cancelled).then(|| placed.clone()),
                cancelled.then(|| stamp(cancelled_at)),
                stamp(updated),
            ],
        )?;
        generated.orders += 1;
        for (n, line) in order.lines().iter().enumerate() {
            let p = &products[usize::from(line.product)];
            let line_total = p.price * i64::from(line.quantity);
            loader.insert(
                INSERT_LINE,
                params![
                    id,
                    n + 1,
                    format!("{external}-{}", n + 1),
                    p.sku,
                    p.name,
                    p.category,
                    line.quantity,
                    p.price,
                    line_total,
                    line_total * p.tax_percent / (100 + p.tax_percent),
                ],
            )?;
            generated.lines += 1;
        }
        if refunded > 0 {
            refund_no += 1;
            loader.insert(
                INSERT_REFUND,
                params![
                    uuid_v7_like(order.refunded_at as u64, refund_no),
                    external,
                    format!("r{refund_no}"),
                    refunded,
                    if order.status == Status::Refunded {
                        "returned"
                    } else {
                        "damaged item"
                    },
                    stamp(order.refunded_at),
                ],
            )?;
            generated.refunds += 1;
        }
    }

    // Ledger rows in id order: ids are stamped with their time.
    let entry_id = |e: u32| uuid_v7_like(ledger.entries[e as usize].at as u64, u64::from(e));
    let lot_id = |l: u32| uuid_v7_like(ledger.lots[l as usize].at as u64, u64::from(l));
    let mut by_time: Vec<u32> = (0..ledger.entries.len() as u32).collect();
    by_time.sort_by_key(|&e| (ledger.entries[e as usize].at, e));
    for e in by_time {
        let entry = &ledger.entries[e as usize];
        let (reason, created_by) = match entry.kind {
            Kind::Earn => (
                Some(format!("order #{}", external_id(entry.order))),
                "webhook:shopify",
            ),
            Kind::Redeem => (None, "key:shop-checkout"),
            Kind::Expire => (Some("expired".to_owned()), "system:expiry"),
            Kind::Reverse => (Some("order refunded".to_owned()), "webhook:shopify"),
        };
        let order = matches!(entry.kind, Kind::Earn | Kind::Reverse).then(|| order_id(entry.order));
        let order_ref = (entry.kind == Kind::Redeem).then(|| external_id(entry.order));
        let related = (entry.related != NONE).then(|| entry_id(entry.related));
        loader.insert(
            INSERT_ENTRY,
            params![
                entry_id(e),
                contact_id(entry.contact),
                entry.kind.as_str(),
                entry.points,
                entry.seq,
                entry.balance_after,
                reason,
                order,
                order_ref,
                related,
                (entry.kind == Kind::Earn).then_some(0),
                stamp(entry.at),
                created_by,
            ],
        )?;
        generated.entries += 1;
    }
    let mut by_time: Vec<u32> = (0..ledger.lots.len() as u32).collect();
    by_time.sort_by_key(|&l| (ledger.lots[l as usize].at, l));
    for l in by_time {
        let lot = &ledger.lots[l as usize];
        loader.insert(
            INSERT_LOT,
            params![
                lot_id(l),
                contact_id(lot.contact),
                entry_id(lot.entry),
                lot.original,
                lot.remaining,
                stamp(lot.at),
                stamp(lot.at + VALIDITY_MS),
            ],
        )?;
        generated.lots += 1;
    }
    for &(entry, lot, points) in &ledger.allocations {
        loader.insert(
            INSERT_ALLOCATION,
            params![entry_id(entry), lot_id(lot), points],
        )?;
        generated.allocations += 1;
    }
    for account in &ledger.accounts {
        loader.insert(
            INSERT_ACCOUNT,
            params![
                contact_id(account.contact),
                account.balance,
                account.seq,
                account.debt,
                account.earned,
                account.redeemed,
                account.expired,
                account.reversed,
            ],
        )?;
        generated.accounts += 1;
    }
    loader.commit()?;
    Ok(generated)
}

/// Fills the migrated (empty) database at `path` with the shop `spec`
/// describes, then checkpoints and syncs it.
pub fn generate(path: &Path, spec: &Spec) -> anyhow::Result<Generated> {
    ensure!(
        spec.contacts <= u64::from(u32::MAX - 1) && spec.orders <= u64::from(u32::MAX - 1),
        "at most 2^32 - 2 contacts and orders"
    );
    let started = Instant::now();
    let plan = plan(spec);
    let planned = started.elapsed();

    let started = Instant::now();
    let connection = Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -1048576; PRAGMA temp_store = MEMORY;",
    )?;
    let mode: String = connection.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    ensure!(
        mode == "wal",
        "the migration should have set WAL, found {mode}"
    );
    let empty: i64 = connection.query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))?;
    ensure!(empty == 0, "the database already holds contacts");
    // Straight into the file: no rollback journal while loading, WAL
    // again (as the migration set it) before anyone else opens the file.
    let mode: String = connection.query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))?;
    ensure!(mode == "off", "could not load without a journal: {mode}");
    let mut generated = write(&connection, &plan, spec, ms(spec.now))?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(mode == "wal", "could not switch back to WAL: {mode}");
    settle(&connection, path)?;
    generated.planned = planned;
    generated.written = started.elapsed();
    Ok(generated)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Contacts whose counters differ from their counted orders.
    pub counters_off: i64,
    /// Accounts whose ledger does not add up.
    pub ledgers_off: i64,
}

/// Checks that every contact's counters are what its orders give, and
/// that every points account adds up: entries against the running
/// balance, the lifetime totals, the last `seq` and `balance_after`, and
/// the open lots less debt.
pub fn verify(connection: &Connection) -> anyhow::Result<Checked> {
    let counters_off = connection.query_row(
        "SELECT count(*) FROM contacts c
         LEFT JOIN (SELECT contact_id, count(*) AS n,
                           sum(max(total_minor - refunded_minor, 0)) AS spent,
                           min(placed_at) AS first_at, max(placed_at) AS last_at
                    FROM orders
                    WHERE paid = 1 AND cancelled = 0 AND status <> 'refunded'
                    GROUP BY contact_id) o ON o.contact_id = c.id
         WHERE c.order_count IS NOT coalesce(o.n, 0)
            OR c.total_spent_minor IS NOT coalesce(o.spent, 0)
            OR c.average_order_value_minor IS NOT coalesce(o.spent / o.n, 0)
            OR c.first_order_at IS NOT o.first_at
            OR c.last_order_at IS NOT o.last_at
            OR c.lifecycle_stage IS NOT CASE WHEN o.n >= 2 THEN 'repeat'
                                             WHEN o.n = 1 THEN 'customer' ELSE 'lead' END",
        [],
        |r| r.get(0),
    )?;
    let ledgers_off = connection.query_row(
        "SELECT count(*) FROM points_accounts a
         WHERE a.balance != a.earned - a.redeemed - a.expired - a.reversed + a.adjusted
            OR a.balance != (SELECT coalesce(sum(points), 0) FROM points_entries e
                             WHERE e.contact_id = a.contact_id)
            OR a.entries != (SELECT count(*) FROM points_entries e WHERE e.contact_id = a.contact_id)
            OR a.balance IS NOT (SELECT balance_after FROM points_entries e
                                 WHERE e.contact_id = a.contact_id AND e.seq = a.entries)
            OR a.balance != (SELECT coalesce(sum(remaining), 0) FROM points_lots l
                             WHERE l.contact_id = a.contact_id AND l.remaining > 0) - a.debt",
        [],
        |r| r.get(0),
    )?;
    Ok(Checked {
        counters_off,
        ledgers_off,
    })
}
