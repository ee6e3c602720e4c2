//! Settings read from Spin variables (natively: `SPIN_VARIABLE_*`), parsed
//! once per instance and re-read every `pool::SETTINGS_REFRESH`. A missing secret fails loudly; everything else has a
//! documented default.

use crate::auth::ApiKeys;
use crate::client_addr::TrustedProxies;
use crate::money::Currency;
use crate::phone::Region;
use crate::signatures::secret_list;
use anyhow::Context as _;
use std::collections::BTreeMap;

/// The variables the `contacts` component reads.
pub const CONTACTS_VARIABLES: &[&str] = &[
    "api_keys",
    "unsubscribe_secret",
    "default_phone_region",
    "public_base_url",
    "server_timing",
];

/// The variables the `forms` component reads.
pub const FORMS_VARIABLES: &[&str] = &[
    "api_keys",
    "unsubscribe_secret",
    "default_phone_region",
    "allowed_origins",
    "default_thank_you_url",
    "form_rate_limit_per_minute",
    "trusted_proxies",
    "server_timing",
];

/// The variables the `purchases` component reads.
pub const PURCHASES_VARIABLES: &[&str] = &[
    "api_keys",
    // Keys the suppression list, which checkout consent must honour.
    "unsubscribe_secret",
    "default_phone_region",
    "shop_currency",
    "shop_timezone",
    "orders_webhook_secrets",
    "shopify_webhook_secrets",
    "woocommerce_webhook_secrets",
    "woocommerce_consent_meta_key",
    "server_timing",
];

/// The variables the `points` component reads.
pub const POINTS_VARIABLES: &[&str] = &[
    "api_keys",
    "shop_currency",
    "shop_timezone",
    "server_timing",
];

/// The variables the `segments` component reads.
pub const SEGMENTS_VARIABLES: &[&str] = &[
    "api_keys",
    // Sign the `unsubscribe_url` of each exported member.
    "unsubscribe_secret",
    "public_base_url",
    "shop_currency",
    "shop_timezone",
    "vip_threshold_minor",
    "server_timing",
];

/// The variables the `events` component reads.
pub const EVENTS_VARIABLES: &[&str] = &[
    "api_keys",
    // Encrypts webhook endpoint secrets at rest (`events::endpoints`).
    "webhook_secret_key",
    "webhook_allowed_hosts",
    "server_timing",
];

/// `public_base_url` when the variable is not set: `spin up`'s own
/// address, right for trying Kizuna on one machine and wrong in any link
/// a customer receives.
pub const DEFAULT_PUBLIC_BASE_URL: &str = "http://127.0.0.1:3000";

/// Settings for one request. A component reads only its own variables
/// (see `spin.toml`); settings of other components stay at their empty
/// values and the code that needs one asks for it through an accessor
/// that fails loudly when it is missing.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_keys: ApiKeys,
    unsubscribe_secret: Option<Vec<u8>>,
    pub default_phone_region: Region,
    /// Origins (`https://lp.example.jp`) that may post forms from a
    /// browser script and be redirected to; forms may add their own.
    pub allowed_origins: Vec<String>,
    pub default_thank_you_url: Option<String>,
    pub form_rate_limit_per_minute: u32,
    /// Proxies (load balancers) whose `X-Forwarded-For` / `Forwarded`
    /// name the client; empty: the TCP peer is the client.
    pub trusted_proxies: TrustedProxies,
    pub public_base_url: String,
    /// The shop's base currency; orders in any other are refused.
    pub shop_currency: Currency,
    /// Webhook secrets per source, several during a rotation.
    pub orders_webhook_secrets: Vec<String>,
    pub shopify_webhook_secrets: Vec<String>,
    pub woocommerce_webhook_secrets: Vec<String>,
    /// The order meta key (`meta_data[].key`) in which a WooCommerce shop
    /// keeps the buyer's email consent; WooCommerce has no standard one.
    /// `None`: WooCommerce orders carry no consent.
    pub woocommerce_consent_meta_key: Option<String>,
    /// A fixed VIP threshold (12-month net spend, minor units); without
    /// one, the top decile's boundary from the analytics is used.
    pub vip_threshold_minor: Option<i64>,
    /// The shop's time zone (see `shop_time`): relative dates in segments
    /// ("within the last 7 days"), points month ends, the liability
    /// report's months.
    pub shop_offset: time::UtcOffset,
    /// Encrypts webhook endpoint secrets at rest; read through
    /// [`Config::webhook_secret_key`], which fails loudly without it.
    webhook_secret_key: Option<String>,
    /// Where webhook endpoints may point (`events::endpoints::AllowList`
    /// parses it); empty: any public HTTPS host.
    pub webhook_allowed_hosts: String,
    /// Whether answers carry a `Server-Timing` header with the stages of
    /// the request (for benchmarks and diagnosis; off by default, since
    /// timings can help an attacker tell cases apart).
    pub server_timing: bool,
}

impl Config {
    /// Why links built on `public_base_url` would not reach a customer
    /// (it is still the default, or names this machine), or `None`. Said
    /// with every unsubscribe link issued, and logged once per instance.
    pub fn public_base_url_warning(&self) -> Option<String> {
        let host = self
            .public_base_url
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
        let name = match host.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        let local = name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        local.then(|| {
            format!(
                "public_base_url is {}, which only this machine can open: set the variable to the address customers reach Kizuna at before sending unsubscribe links",
                self.public_base_url
            )
        })
    }
    pub fn from_variables(vars: &BTreeMap<String, String>) -> anyhow::Result<Config> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let api_keys = ApiKeys::parse(get("api_keys").context("variable `api_keys` is not set")?)?;
        let unsubscribe_secret = get("unsubscribe_secret").map(|s| s.as_bytes().to_vec());
        if unsubscribe_secret.as_ref().is_some_and(|s| s.len() < 16) {
            anyhow::bail!("variable `unsubscribe_secret` must be at least 16 bytes");
        }
        let default_phone_region = Region::parse(get("default_phone_region").unwrap_or("JP"))
            .map_err(|e| anyhow::anyhow!("variable `default_phone_region`: {e}"))?;
        let allowed_origins = get("allowed_origins")
            .map(|v| {
                v.split([',', ' '])
                    .filter_map(normalise_origin)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let default_thank_you_url = get("default_thank_you_url").map(str::to_owned);
        let form_rate_limit_per_minute = match get("form_rate_limit_per_minute") {
            None => 10,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("variable `form_rate_limit_per_minute` must be a positive number")?,
        };
        let trusted_proxies = TrustedProxies::parse(get("trusted_proxies").unwrap_or(""))
            .map_err(|e| anyhow::anyhow!("variable `trusted_proxies`: {e}"))?;
        let public_base_url = get("public_base_url")
            .unwrap_or(DEFAULT_PUBLIC_BASE_URL)
            .trim_end_matches('/')
            .to_owned();
        let shop_currency = Currency::parse(get("shop_currency").unwrap_or("JPY"))
            .map_err(|e| anyhow::anyhow!("variable `shop_currency`: {e}"))?;
        let server_timing = match get("server_timing").unwrap_or("false") {
            "true" => true,
            "false" | "" => false,
            _ => anyhow::bail!("variable `server_timing` must be true or false"),
        };
        let webhook_secret_key = get("webhook_secret_key").map(str::to_owned);
        if webhook_secret_key.as_ref().is_some_and(|k| k.len() < 32) {
            anyhow::bail!("variable `webhook_secret_key` must be at least 32 characters");
        }
        Ok(Config {
            webhook_secret_key,
            webhook_allowed_hosts: get("webhook_allowed_hosts").unwrap_or("").to_owned(),
            server_timing,
            api_keys,
            unsubscribe_secret,
            default_phone_region,
            allowed_origins,
            default_thank_you_url,
            form_rate_limit_per_minute,
            trusted_proxies,
            public_base_url,
            shop_currency,
            orders_webhook_secrets: secret_list(get("orders_webhook_secrets")),
            shopify_webhook_secrets: secret_list(get("shopify_webhook_secrets")),
            woocommerce_webhook_secrets: secret_list(get("woocommerce_webhook_secrets")),
            woocommerce_consent_meta_key: get("woocommerce_consent_meta_key").map(str::to_owned),
            shop_offset: crate::shop_time::parse(
                get("shop_timezone").unwrap_or(crate::shop_time::DEFAULT_ZONE),
            )
            .context("variable `shop_timezone`: an IANA zone without daylight saving (Asia/Tokyo) or an offset like +09:00")?,
            vip_threshold_minor: match get("vip_threshold_minor") {
                None => None,
                Some(v) => {
                    Some(v.parse::<i64>().ok().filter(|n| *n > 0).context(
                        "variable `vip_threshold_minor` must be a positive whole number",
                    )?)
                }
            },
        })
    }

    /// The text webhook endpoint secrets are encrypted with.
    pub fn webhook_secret_key(&self) -> anyhow::Result<&str> {
        self.webhook_secret_key
            .as_deref()
            .context("variable `webhook_secret_key` is not set for this component")
    }

    /// The key that signs unsubscribe links.
    pub fn unsubscribe_secret(&self) -> anyhow::Result<&[u8]> {
        self.unsubscribe_secret
            .as_deref()
            .context("variable `unsubscribe_secret` is not set for this component")
    }
}

/// `scheme://host[:port]` of an absolute http(s) URL, lower-cased, or
/// `None` for anything else. Comparing these strings is how redirects and
/// CORS decide; no path, user-info or odd scheme gets through.
pub fn normalise_origin(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty()
        || authority.contains('@')
        || authority.contains('\\')
        || !authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return None;
    }
    Some(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// A URL safe to send as a `Location`: absolute http(s) (see
/// [`normalise_origin`]), no control characters or spaces, and non-ASCII
/// characters (a Japanese path, say) percent-encoded as UTF-8.
pub fn redirect_url(url: &str) -> Option<String> {
    let url = url.trim();
    normalise_origin(url)?;
    if url.len() > 2000 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_only_this_machine_opens_is_warned_of() {
        let with = |url: Option<&str>| {
            let mut variables = std::collections::BTreeMap::new();
            variables.insert("api_keys".to_owned(), "[]".to_owned());
            if let Some(url) = url {
                variables.insert("public_base_url".to_owned(), url.to_owned());
            }
            Config::from_variables(&variables)
                .unwrap()
                .public_base_url_warning()
        };
        let warning = with(None).expect("the default is warned of");
        assert!(warning.contains("http://127.0.0.1:3000"), "{warning}");
        for local in [
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://[::1]:3000/",
            "http://0.0.0.0:80",
            "http://user@127.0.0.2:3000",
        ] {
            assert!(with(Some(local)).is_some(), "{local}");
        }
        for public in [
            "https://crm.example.jp",
            "https://127.0.0.1.example.jp",
            "https://crm.example.jp:8443/kizuna",
        ] {
            assert_eq!(with(Some(public)), None, "{public}");
        }
    }

    #[test]
    fn redirect_urls_are_header_safe() {
        assert_eq!(
            redirect_url("https://lp.example.jp/ありがとう?x=1").as_deref(),
            Some("https://lp.example.jp/%E3%81%82%E3%82%8A%E3%81%8C%E3%81%A8%E3%81%86?x=1")
        );
        for bad in [
            "https://lp.example.jp/a\r\nSet-Cookie: x=1",
            "https://lp.example.jp/a b",
            "javascript:alert(1)",
        ] {
            assert_eq!(redirect_url(bad), None, "case {bad:?}");
        }
    }

    #[test]
    fn origins_are_scheme_host_port_only() {
        assert_eq!(
            normalise_origin("https://LP.example.jp/thanks?x=1").as_deref(),
            Some("https://lp.example.jp")
        );
        assert_eq!(
            normalise_origin("http://localhost:8080").as_deref(),
            Some("http://localhost:8080")
        );
        for bad in [
            "javascript:alert(1)",
            "//evil.example",
            "https://a@evil.example/",
            "ftp://x.jp",
            "https://",
            "https://evil.example\\@good.jp",
        ] {
            assert_eq!(normalise_origin(bad), None, "case {bad:?}");
        }
    }
}
