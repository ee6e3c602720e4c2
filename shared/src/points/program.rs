//! Program rules, versioned: each `PUT` or `PATCH` stores a new version
//! and each earn entry records the version that computed it.
//!
//! Earn calculation, in one documented order:
//! 1. The base is the order's `subtotal` (before tax and shipping) or its
//!    `total`, as `earn_base` says, minus the part paid with points
//!    (`points_used × point_value_minor`), never below zero.
//! 2. The base is shared across lines by their line totals. Each line has
//!    one multiplier: its SKU's if the SKU has one, else its category's,
//!    else 1. SKU and category multipliers do not multiply each other.
//! 3. Of the campaigns running when the order was placed (`starts_at <=
//!    placed_at < ends_at`) whose tag filter the contact matches, the one
//!    with the highest multiplier applies to every line; campaigns do not
//!    stack with one another.
//! 4. points = floor(base × Σ(line share × line multiplier) × campaign ×
//!    earn_rate), computed exactly in integers and rounded down once.

use crate::error::{ApiError, FieldError};
use crate::ports::Db;
use crate::timestamp;
use anyhow::Context as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime, UtcOffset};

/// A multiplier with up to two decimals (`5`, `1.5`), kept in hundredths
/// so the calculation stays in integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multiplier(u32);

impl Multiplier {
    pub const ONE: Multiplier = Multiplier(100);
    pub fn hundredths(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Multiplier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        let text = number.to_string();
        let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
        let bad = || {
            serde::de::Error::custom(
                "a multiplier above 0 and at most 100, with at most two decimals",
            )
        };
        if fraction.len() > 2 || whole.starts_with('-') || text.contains(['e', 'E']) {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
        let hundredths = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(fraction))
            .ok_or_else(bad)?;
        if hundredths == 0 || hundredths > 10_000 {
            return Err(bad());
        }
        Ok(Multiplier(hundredths))
    }
}

impl Serialize for Multiplier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(100) {
            serializer.serialize_u32(self.0 / 100)
        } else {
            serializer.serialize_f64(f64::from(self.0) / 100.0)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarnRate {
    /// `points` per `per_minor` minor units of the base (1 per 100 yen).
    pub points: u32,
    pub per_minor: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarnBase {
    Subtotal,
    Total,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    pub name: String,
    pub starts_at: String,
    pub ends_at: String,
    pub multiplier: Multiplier,
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expiry {
    DaysAfterEarn { days: u32 },
    EndOfMonthAfter { months: u32 },
    Never,
}

/// The rules as callers send and read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default = "default_rate")]
    pub earn_rate: EarnRate,
    #[serde(default = "default_base")]
    pub earn_base: EarnBase,
    #[serde(default)]
    pub sku_multipliers: BTreeMap<String, Multiplier>,
    #[serde(default)]
    pub category_multipliers: BTreeMap<String, Multiplier>,
    #[serde(default)]
    pub campaigns: Vec<Campaign>,
    #[serde(default)]
    pub pending_days: u32,
    #[serde(default = "default_expiry")]
    pub expiry: Expiry,
    #[serde(default = "default_min_redeem")]
    pub min_redeem: u32,
    /// What one point is worth at checkout, in minor units (1 = ¥1).
    #[serde(default = "default_point_value")]
    pub point_value_minor: u32,
}

fn default_rate() -> EarnRate {
    EarnRate {
        points: 1,
        per_minor: 100,
    }
}
fn default_base() -> EarnBase {
    EarnBase::Subtotal
}
fn default_expiry() -> Expiry {
    Expiry::DaysAfterEarn { days: 365 }
}
fn default_min_redeem() -> u32 {
    1
}
fn default_point_value() -> u32 {
    1
}

impl Default for Rules {
    /// 1 point per ¥100 of subtotal, available at once, valid a year.
    fn default() -> Self {
        Rules {
            earn_rate: default_rate(),
            earn_base: default_base(),
            sku_multipliers: BTreeMap::new(),
            category_multipliers: BTreeMap::new(),
            campaigns: Vec::new(),
            pending_days: 0,
            expiry: default_expiry(),
            min_redeem: default_min_redeem(),
            point_value_minor: default_point_value(),
        }
    }
}

/// The settings a program has, as `Rules` serialises them: the fields a
/// `PATCH` may name.
pub const FIELDS: &[&str] = &[
    "earn_rate",
    "earn_base",
    "sku_multipliers",
    "category_multipliers",
    "campaigns",
    "pending_days",
    "expiry",
    "min_redeem",
    "point_value_minor",
];

impl Rules {
    /// These rules with a merge patch applied (`PATCH /v1/points/program`):
    /// what the patch leaves out stays, `null` puts a setting back to its
    /// default, multiplier maps merge SKU by SKU, and `campaigns` (a list)
    /// is replaced whole. `expiry` is one choice of policy, so it too is
    /// replaced whole: merging `{"policy": "never"}` into a
    /// `days_after_earn` expiry would keep a `days` that `never` lacks.
    /// Unknown settings are refused, all of them named; the result still
    /// has to pass [`Rules::validate`].
    pub fn patched(
        &self,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Rules, ApiError> {
        let unknown: Vec<FieldError> = patch
            .keys()
            .filter(|key| !FIELDS.contains(&key.as_str()))
            .map(|key| FieldError::new(key.clone(), "unknown field"))
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::Validation(unknown));
        }
        // Through text, with the serialiser `save` already uses: a
        // `to_value` of the rules would add its own copy of that code to
        // the component.
        let mut rules: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(self).context("rules")?)
                .context("rules")?;
        for (key, value) in patch {
            match (key.as_str(), value, rules.as_object_mut()) {
                (_, serde_json::Value::Null, Some(object)) => {
                    object.remove(key);
                }
                ("expiry", whole, Some(object)) => {
                    object.insert(key.clone(), whole.clone());
                }
                (_, value, Some(object)) => {
                    json_patch::merge(
                        object.entry(key.clone()).or_insert(serde_json::Value::Null),
                        value,
                    );
                }
                (_, _, None) => return Err(anyhow::anyhow!("rules serialise to an object").into()),
            }
        }
        Rules::from_settings(&rules)
    }

    /// The rules a `PUT` body or a patched program holds, through one
    /// parser, so that a bad value is the same 422 naming the same field
    /// either way (and the component holds one copy of that parser).
    pub fn from_settings(settings: &serde_json::Value) -> Result<Rules, ApiError> {
        crate::http::parse_json(&bytes::Bytes::from(settings.to_string()))
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        if !(1..=1_000_000).contains(&self.earn_rate.points)
            || !(1..=1_000_000).contains(&self.earn_rate.per_minor)
        {
            errors.push(FieldError::new(
                "earn_rate",
                "points and per_minor are whole numbers from 1 to 1,000,000",
            ));
        }
        if self.sku_multipliers.len() > 10_000 || self.category_multipliers.len() > 1_000 {
            errors.push(FieldError::new(
                "multipliers",
                "at most 10,000 SKUs and 1,000 categories",
            ));
        }
        if self.campaigns.len() > 100 {
            errors.push(FieldError::new("campaigns", "at most 100 campaigns"));
        }
        for (index, campaign) in self.campaigns.iter().enumerate() {
            let field = |f: &str| format!("campaigns[{index}].{f}");
            if campaign.name.trim().is_empty() || campaign.name.chars().count() > 100 {
                errors.push(FieldError::new(field("name"), "1 to 100 characters"));
            }
            match (
                timestamp::parse(&campaign.starts_at),
                timestamp::parse(&campaign.ends_at),
            ) {
                (Some(start), Some(end)) if end <= start => {
                    errors.push(FieldError::new(field("ends_at"), "must be after starts_at"))
                }
                (Some(_), Some(_)) => {}
                (None, _) => {
                    errors.push(FieldError::new(field("starts_at"), "an RFC 3339 timestamp"))
                }
                (_, None) => {
                    errors.push(FieldError::new(field("ends_at"), "an RFC 3339 timestamp"))
                }
            }
            if campaign
                .tag
                .as_deref()
                .is_some_and(|t| t.trim().is_empty() || t.chars().count() > 64)
            {
                errors.push(FieldError::new(field("tag"), "1 to 64 characters"));
            }
        }
        if self.pending_days > 3650 {
            errors.push(FieldError::new("pending_days", "at most 3650"));
        }
        match self.expiry {
            Expiry::DaysAfterEarn { days } if !(1..=3650).contains(&days) => {
                errors.push(FieldError::new("expiry.days", "from 1 to 3650"))
            }
            Expiry::EndOfMonthAfter { months } if months > 120 => {
                errors.push(FieldError::new("expiry.months", "from 0 to 120"))
            }
            _ => {}
        }
        // Points must be usable at some moment between pending and expiry.
        let shortest_life_days = match self.expiry {
            Expiry::Never => u32::MAX,
            Expiry::DaysAfterEarn { days } => days,
            Expiry::EndOfMonthAfter { months } => months.saturating_mul(28),
        };
        if self.pending_days > 0 && self.pending_days >= shortest_life_days {
            errors.push(FieldError::new(
                "pending_days",
                "must end before the points can expire (fewer days than the expiry allows)",
            ));
        }
        if !(1..=1_000_000).contains(&self.min_redeem) {
            errors.push(FieldError::new("min_redeem", "from 1 to 1,000,000"));
        }
        if !(1..=1_000_000).contains(&self.point_value_minor) {
            errors.push(FieldError::new("point_value_minor", "from 1 to 1,000,000"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(errors))
        }
    }

    /// When points earned at `earned_at` expire (`None`: never); month
    /// ends are counted in the shop's time zone `shop` (`Config::shop_offset`).
    pub fn expires_at(&self, earned_at: OffsetDateTime, shop: UtcOffset) -> Option<OffsetDateTime> {
        match self.expiry {
            Expiry::Never => None,
            Expiry::DaysAfterEarn { days } => Some(earned_at + Duration::days(i64::from(days))),
            // The end of the month `months` after the earn month, in shop
            // time: points expire at the next month's first instant.
            Expiry::EndOfMonthAfter { months } => {
                crate::shop_time::month_start(earned_at, i64::from(months) + 1, shop)
            }
        }
    }

    /// When points earned at `earned_at` become available.
    pub fn available_at(&self, earned_at: OffsetDateTime) -> OffsetDateTime {
        earned_at + Duration::days(i64::from(self.pending_days))
    }
}

/// The most points one order can earn (the API's bound on any amount).
pub const MAX_EARN: i64 = 1_000_000_000;

/// One order line as the earn calculation sees it.
#[derive(Debug, Clone)]
pub struct EarnLine {
    pub sku: Option<String>,
    pub category: Option<String>,
    pub total: i64,
}

/// What an order contributes to the calculation.
#[derive(Debug, Clone)]
pub struct EarnOrder {
    pub subtotal: i64,
    pub total: i64,
    pub points_used: i64,
    pub placed_at: OffsetDateTime,
    pub lines: Vec<EarnLine>,
}

impl Rules {
    /// The points an order earns; see the module doc for the order of steps.
    pub fn points_for(&self, order: &EarnOrder, contact_tags: &[String]) -> i64 {
        let base = match self.earn_base {
            EarnBase::Subtotal => order.subtotal,
            EarnBase::Total => order.total,
        };
        let paid_with_points = order
            .points_used
            .saturating_mul(i64::from(self.point_value_minor));
        let base = i128::from(base.saturating_sub(paid_with_points).max(0));
        let line_sum: i128 = order.lines.iter().map(|l| i128::from(l.total.max(0))).sum();
        // Σ(line total × multiplier) / Σ(line total), in hundredths.
        let (weighted, weight) = if line_sum == 0 {
            (100, 1)
        } else {
            let weighted: i128 = order
                .lines
                .iter()
                .map(|line| {
                    i128::from(line.total.max(0))
                        * i128::from(self.line_multiplier(line).hundredths())
                })
                .sum();
            (weighted, line_sum)
        };
        let campaign = self.campaign_multiplier(order.placed_at, contact_tags);
        // Within validated rules this fits in i128 except for absurd
        // orders; an overflow saturates, and no earn exceeds MAX_EARN.
        let numerator = base
            .checked_mul(weighted)
            .and_then(|n| n.checked_mul(i128::from(campaign.hundredths())))
            .and_then(|n| n.checked_mul(i128::from(self.earn_rate.points)));
        let denominator = weight * 100 * 100 * i128::from(self.earn_rate.per_minor);
        let points = numerator.map_or(i128::from(MAX_EARN), |n| n / denominator);
        i64::try_from(points.min(i128::from(MAX_EARN))).unwrap_or(MAX_EARN)
    }

    fn line_multiplier(&self, line: &EarnLine) -> Multiplier {
        line.sku
            .as_ref()
            .and_then(|sku| self.sku_multipliers.get(sku))
            .or_else(|| {
                line.category
                    .as_ref()
                    .and_then(|c| self.category_multipliers.get(c))
            })
            .copied()
            .unwrap_or(Multiplier::ONE)
    }

    fn campaign_multiplier(
        &self,
        placed_at: OffsetDateTime,
        contact_tags: &[String],
    ) -> Multiplier {
        self.campaigns
            .iter()
            .filter(|c| {
                let running = matches!(
                    (timestamp::parse(&c.starts_at), timestamp::parse(&c.ends_at)),
                    (Some(start), Some(end)) if start <= placed_at && placed_at < end
                );
                running && c.tag.as_ref().is_none_or(|tag| contact_tags.contains(tag))
            })
            .map(|c| c.multiplier)
            .max_by_key(|m| m.hundredths())
            .unwrap_or(Multiplier::ONE)
    }
}

/// A stored version of the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Program {
    /// 0 is the built-in default, before any `PUT`.
    pub version: i64,
    pub rules: Rules,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
}

/// The program in force.
pub async fn current(db: &impl Db) -> anyhow::Result<Program> {
    let rows = db
        .execute(
            "SELECT version, rules, created_at, created_by FROM points_programs ORDER BY version DESC LIMIT 1",
            &[],
        )
        .await
        .context("failed to read the points program")?;
    match rows.first() {
        None => Ok(Program {
            version: 0,
            rules: Rules::default(),
            created_at: None,
            created_by: None,
        }),
        Some(row) => Ok(Program {
            version: row.i64("version")?,
            rules: serde_json::from_str(row.str("rules")?).context("stored points rules")?,
            created_at: Some(row.str("created_at")?.to_owned()),
            created_by: Some(row.str("created_by")?.to_owned()),
        }),
    }
}

/// Stores `rules` as the next version; call inside a transaction.
pub async fn save(
    db: &impl Db,
    rules: &Rules,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Program> {
    let version = current(db).await?.version + 1;
    let at = timestamp::format(now);
    db.execute(
        "INSERT INTO points_programs (version, rules, created_at, created_by) VALUES (?1, ?2, ?3, ?4)",
        &[version.into(), serde_json::to_string(rules).context("rules")?.into(), at.as_str().into(), actor.into()],
    )
    .await
    .context("failed to save the points program")?;
    Ok(Program {
        version,
        rules: rules.clone(),
        created_at: Some(at),
        created_by: Some(actor.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn order(lines: &[(Option<&str>, Option<&str>, i64)], subtotal: i64) -> EarnOrder {
        EarnOrder {
            subtotal,
            total: subtotal + 1000,
            points_used: 0,
            placed_at: datetime!(2026-11-22 03:00 UTC),
            lines: lines
                .iter()
                .map(|(sku, category, total)| EarnLine {
                    sku: sku.map(str::to_owned),
                    category: category.map(str::to_owned),
                    total: *total,
                })
                .collect(),
        }
    }

    fn rules(json: serde_json::Value) -> Rules {
        let rules: Rules = serde_json::from_value(json).unwrap();
        rules.validate().unwrap();
        rules
    }

    #[test]
    fn one_point_per_hundred_yen_rounded_down() {
        let r = Rules::default();
        assert_eq!(r.points_for(&order(&[(None, None, 5050)], 5050), &[]), 50);
        assert_eq!(r.points_for(&order(&[(None, None, 99)], 99), &[]), 0);
        let mut paid_with_points = order(&[(None, None, 5000)], 5000);
        paid_with_points.points_used = 1000;
        assert_eq!(r.points_for(&paid_with_points, &[]), 40);
    }

    #[test]
    fn sku_beats_category_and_the_best_campaign_applies_once() {
        let r = rules(serde_json::json!({
            "sku_multipliers": {"TEA-GOLD": 3},
            "category_multipliers": {"tea": 2, "sweets": 1.5},
            "campaigns": [
                {"name": "5x", "starts_at": "2026-11-01T00:00:00+09:00", "ends_at": "2026-12-01T00:00:00+09:00", "multiplier": 5},
                {"name": "3x", "starts_at": "2026-11-01T00:00:00+09:00", "ends_at": "2026-12-01T00:00:00+09:00", "multiplier": 3},
                {"name": "vip 10x", "starts_at": "2026-11-01T00:00:00+09:00", "ends_at": "2026-12-01T00:00:00+09:00", "multiplier": 10, "tag": "vip"}
            ]
        }));
        // 2000 tea-gold (×3) + 2000 tea (×2) + 2000 sweets (×1.5) + 4000 other (×1)
        let o = order(
            &[
                (Some("TEA-GOLD"), Some("tea"), 2000),
                (None, Some("tea"), 2000),
                (None, Some("sweets"), 2000),
                (None, None, 4000),
            ],
            10_000,
        );
        // base 100 points; weighted (60+40+30+40)/100 = 1.7 → 170; campaign 5× → 850
        assert_eq!(r.points_for(&o, &[]), 850);
        assert_eq!(r.points_for(&o, &["vip".to_owned()]), 1700);
        let mut outside = o.clone();
        outside.placed_at = datetime!(2026-12-01 00:00 +9);
        assert_eq!(r.points_for(&outside, &[]), 170, "ends_at is exclusive");
    }

    #[test]
    fn expiry_policies() {
        let tokyo = crate::shop_time::DEFAULT;
        let earned = datetime!(2026-11-22 03:00 UTC);
        let mut r = Rules::default();
        assert_eq!(
            r.expires_at(earned, tokyo),
            Some(datetime!(2027-11-22 03:00 UTC))
        );
        r.expiry = Expiry::EndOfMonthAfter { months: 12 };
        assert_eq!(
            r.expires_at(earned, tokyo),
            Some(datetime!(2027-12-01 00:00 +9))
        );
        r.expiry = Expiry::EndOfMonthAfter { months: 0 };
        // 2026-11-30T20:00Z is already December 1st in Tokyo, still
        // November in UTC.
        let late = datetime!(2026-11-30 20:00 UTC);
        assert_eq!(
            r.expires_at(late, tokyo),
            Some(datetime!(2027-01-01 00:00 +9))
        );
        assert_eq!(
            r.expires_at(late, UtcOffset::UTC),
            Some(datetime!(2026-12-01 00:00 UTC))
        );
        r.expiry = Expiry::Never;
        assert_eq!(r.expires_at(earned, tokyo), None);
    }

    #[test]
    fn a_patch_may_name_every_setting_and_only_those() {
        let defaults = serde_json::to_value(Rules::default()).unwrap();
        let mut settings: Vec<&str> = defaults
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = FIELDS.to_vec();
        settings.sort_unstable();
        fields.sort_unstable();
        assert_eq!(settings, fields);
    }

    #[test]
    fn a_patch_merges_maps_replaces_lists_and_the_expiry_and_null_restores_defaults() {
        let before = rules(serde_json::json!({
            "sku_multipliers": {"A": 2, "B": 3},
            "campaigns": [{"name": "x", "starts_at": "2026-11-01T00:00:00Z", "ends_at": "2026-12-01T00:00:00Z", "multiplier": 2}],
            "expiry": {"policy": "end_of_month_after", "months": 6},
            "min_redeem": 100
        }));
        let patch = serde_json::json!({
            "sku_multipliers": {"B": null, "C": 1.5},
            "campaigns": [],
            "expiry": {"policy": "days_after_earn", "days": 90},
            "min_redeem": null
        });
        let after = before.patched(patch.as_object().unwrap()).unwrap();
        assert_eq!(
            after,
            rules(serde_json::json!({
                "sku_multipliers": {"A": 2, "C": 1.5},
                "expiry": {"policy": "days_after_earn", "days": 90}
            }))
        );
        let empty = serde_json::Map::new();
        assert_eq!(before.patched(&empty).unwrap(), before);
    }

    #[test]
    fn invalid_rules_are_refused() {
        for (case, json) in [
            (
                "end before start",
                serde_json::json!({"campaigns": [{"name": "x", "starts_at": "2026-12-01T00:00:00Z", "ends_at": "2026-11-01T00:00:00Z", "multiplier": 2}]}),
            ),
            (
                "zero rate",
                serde_json::json!({"earn_rate": {"points": 0, "per_minor": 100}}),
            ),
            ("zero min redeem", serde_json::json!({"min_redeem": 0})),
            (
                "expiry days zero",
                serde_json::json!({"expiry": {"policy": "days_after_earn", "days": 0}}),
            ),
            (
                "pending as long as the expiry",
                serde_json::json!({"pending_days": 30, "expiry": {"policy": "days_after_earn", "days": 30}}),
            ),
            (
                "pending with a month-end expiry this month",
                serde_json::json!({"pending_days": 1, "expiry": {"policy": "end_of_month_after", "months": 0}}),
            ),
        ] {
            let rules: Rules = serde_json::from_value(json).unwrap();
            assert!(rules.validate().is_err(), "case {case}");
        }
        for (case, json) in [
            (
                "multiplier three decimals",
                serde_json::json!({"sku_multipliers": {"A": 1.234}}),
            ),
            (
                "negative multiplier",
                serde_json::json!({"sku_multipliers": {"A": -2}}),
            ),
            (
                "zero multiplier",
                serde_json::json!({"sku_multipliers": {"A": 0}}),
            ),
            (
                "unknown policy",
                serde_json::json!({"expiry": {"policy": "sometimes"}}),
            ),
            ("unknown field", serde_json::json!({"bonus": 1})),
        ] {
            assert!(
                serde_json::from_value::<Rules>(json).is_err(),
                "case {case}"
            );
        }
    }
}
