//! Recorded event logs for the tests: PostHog-like events (the `PluginEvent` shape posthog-js
//! traffic takes by the time plugins see it), deterministic from a seed, with malformed lines
//! mixed in on request. Written here so the tests need nothing outside the repository.
//!
//! Each good line is one event of a visitor session: `$pageview`, `$autocapture` (with an
//! `$elements` chain), `$pageleave`, `$identify`, `$feature_flag_called` or a custom event, with
//! the properties posthog-js sends (URL parts, browser, screen, UTM campaign as a nested object,
//! `$set_once`), some text outside ASCII, about one in twenty events from internal hosts or bots
//! (for filters to drop), IPs from a small table of public addresses (one in fifty `null`), and
//! teams skewed the way real traffic is (team 1 busiest).

use serde_json::{Value, json};

/// What a malformed line looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadKind {
    /// A good line cut in the middle.
    Truncated,
    /// Valid JSON that is not an object.
    NonObject,
    /// An event without its `event` field.
    MissingEvent,
    /// An event with one very large property.
    HugeProperty,
    /// A good line with a byte that is not UTF-8 in a string.
    InvalidUtf8,
}

impl BadKind {
    /// The kind named `name` (as the `--bad-kinds` list spells it).
    pub fn parse(name: &str) -> Option<BadKind> {
        Some(match name {
            "truncated" => BadKind::Truncated,
            "non_object" => BadKind::NonObject,
            "missing_event" => BadKind::MissingEvent,
            "huge_property" => BadKind::HugeProperty,
            "invalid_utf8" => BadKind::InvalidUtf8,
            _ => return None,
        })
    }
}

/// How to generate a log.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Lines to write.
    pub count: usize,
    /// Seed: the same seed and options give the same bytes.
    pub seed: u64,
    /// Teams 1..=teams.
    pub teams: u32,
    /// Distinct visitors (`distinct_id`s), each of one team drawn by the teams' shares; every
    /// event is of a visitor picked uniformly. At most this many teams appear in a log.
    pub visitors: usize,
    /// Share of lines replaced by malformed ones.
    pub bad_rate: f64,
    /// Which malformed kinds to use.
    pub bad_kinds: Vec<BadKind>,
    /// Size of the property of `HugeProperty` lines, in KiB.
    pub huge_kb: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            count: 1000,
            seed: 1,
            teams: 3,
            visitors: 200,
            bad_rate: 0.0,
            bad_kinds: vec![BadKind::Truncated, BadKind::NonObject, BadKind::MissingEvent, BadKind::HugeProperty, BadKind::InvalidUtf8],
            huge_kb: 1100,
        }
    }
}

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn hex(&mut self, digits: usize) -> String {
        (0..digits).map(|_| char::from_digit(self.below(16) as u32, 16).expect("a hex digit")).collect()
    }
}

const HOSTS: &[&str] = &["app.example.com", "www.example.org", "shop.example.net", "docs.example.com"];
const INTERNAL_HOSTS: &[&str] = &["localhost", "internal.example.com"];
const PATHS: &[&str] = &["/", "/pricing", "/docs/getting-started", "/blog/launch-week", "/cart", "/signup", "/settings/team", "/search"];
const TITLES: &[&str] =
    &["Pricing – Example", "Preise – Übersicht", "価格 | Example", "Getting started", "Ürünler", "Корзина", "Launch week 🚀"];
const BROWSERS: &[(&str, &str, &str)] = &[
    (
        "Chrome",
        "124",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    ),
    ("Firefox", "125", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    (
        "Safari",
        "17",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    ),
    (
        "Edge",
        "124",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    ),
];
const BOT_AGENTS: &[&str] =
    &["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Mozilla/5.0 HeadlessChrome/124.0.0.0"];
const OSES: &[(&str, &str)] = &[("Mac OS X", "14.4.1"), ("Windows", "10.0"), ("iOS", "17.4"), ("Android", "14"), ("Linux", "")];
/// Public addresses (university and research networks, public resolvers) that GeoIP knows.
const IPS: &[&str] = &[
    "81.2.69.142",
    "128.101.101.101",
    "89.160.20.112",
    "175.16.199.1",
    "216.160.83.56",
    "2.125.160.216",
    "67.43.156.1",
    "202.196.224.1",
    "8.8.8.8",
    "2001:480::1",
];
const CAMPAIGNS: &[&str] = &["june-launch", "newsletter-42", "spring-sale", "retargeting"];
const CUSTOM_EVENTS: &[&str] = &["signed_up", "invited_teammate", "checkout_started", "report_exported", "plan_upgraded"];

/// The log: one line per event, `\n` after each.
pub fn generate(opts: &GenOptions) -> Vec<u8> {
    let mut rng = Rng(opts.seed ^ 0x5eed_5eed_5eed_5eed);
    // Team shares fall off as 1 / rank^1.3: three teams get about 61/25/15%.
    let cumulative: Vec<f64> = (1..=opts.teams.max(1))
        .scan(0.0, |sum, r| {
            *sum += 1.0 / f64::from(r).powf(1.3);
            Some(*sum)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or(1.0);
    let visitors: Vec<(String, u32)> = (0..opts.visitors.max(1))
        .map(|_| {
            let x = rng.unit() * total;
            let team = cumulative.partition_point(|c| *c <= x).min(cumulative.len() - 1) as u32 + 1;
            (format!("0191{}-{}-7{}-{}-{}", rng.hex(4), rng.hex(4), rng.hex(3), rng.hex(4), rng.hex(12)), team)
        })
        .collect();
    let start_ms: i64 = 1_717_401_600_000; // 2024-06-03T08:00:00Z
    let mut out = Vec::with_capacity(opts.count * 2048);
    for i in 0..opts.count {
        let (distinct_id, team) = rng.pick(&visitors).clone();
        let at = start_ms + i as i64 * 37 + rng.below(30) as i64;
        let event = event(&mut rng, i, &distinct_id, team, at);
        let mut line = event.to_string().into_bytes();
        if opts.bad_rate > 0.0 && !opts.bad_kinds.is_empty() && rng.unit() < opts.bad_rate {
            let kind = *rng.pick(&opts.bad_kinds);
            line = malformed(&mut rng, kind, event, opts.huge_kb);
        }
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out
}

/// `ms` (after 1970) as the ISO 8601 text PostHog's events carry.
fn iso(ms: i64) -> String {
    operators::plugin::log::format_iso(u64::try_from(ms).expect("generated instants are after 1970"))
}

fn event(rng: &mut Rng, index: usize, distinct_id: &str, team: u32, at: i64) -> Value {
    let unusual = rng.below(20) == 0;
    let host = if unusual && rng.below(2) == 0 { *rng.pick(INTERNAL_HOSTS) } else { *rng.pick(HOSTS) };
    let path = *rng.pick(PATHS);
    let (browser, version, agent) = *rng.pick(BROWSERS);
    let agent = if unusual && host != "localhost" && host != "internal.example.com" { *rng.pick(BOT_AGENTS) } else { agent };
    let (os, os_version) = *rng.pick(OSES);
    let name = match rng.below(100) {
        0..=44 => "$pageview",
        45..=69 => "$autocapture",
        70..=79 => "$pageleave",
        80..=84 => "$identify",
        85..=89 => "$feature_flag_called",
        _ => *rng.pick(CUSTOM_EVENTS),
    };
    let ip = if rng.below(50) == 0 { Value::Null } else { json!(*rng.pick(IPS)) };
    let mut properties = json!({
        "$os": os, "$os_version": os_version, "$browser": browser, "$browser_version": version.parse::<u32>().unwrap_or(0),
        "$device_type": if os == "iOS" || os == "Android" { "Mobile" } else { "Desktop" },
        "$current_url": format!("https://{host}{path}?ref=nav"), "$host": host, "$pathname": path,
        "$screen_height": 600 + rng.below(800), "$screen_width": 800 + rng.below(1200),
        "$lib": "web", "$lib_version": "1.130.2", "$insert_id": rng.hex(16), "$time": at as f64 / 1000.0,
        "$device_id": distinct_id, "$session_id": format!("{}-s", &distinct_id[..13]),
        "$referrer": "https://www.google.com/", "$referring_domain": "www.google.com", "$raw_user_agent": agent,
        "utm": {"source": "newsletter", "medium": "email", "campaign": {"name": *rng.pick(CAMPAIGNS), "id": 4000 + rng.below(999)}},
        "title": *rng.pick(TITLES),
        "$set_once": {"$initial_referrer": "https://www.google.com/", "$initial_current_url": format!("https://{host}/")},
    });
    if name == "$autocapture" {
        let depth = 2 + rng.below(4);
        let elements: Vec<Value> = (0..depth)
            .map(|d| {
                let tag = ["button", "a", "div", "span", "li"][(d % 5) as usize];
                let text = if d == 0 { "Sign up" } else { "" };
                json!({"tag_name": tag, "nth_child": d + 1, "attr__class": format!("btn btn-{d}"), "$el_text": text})
            })
            .collect();
        properties["$event_type"] = json!("click");
        properties["$elements"] = Value::Array(elements);
    }
    if name == "$identify" {
        properties["$set"] = json!({"email": format!("user{}@example.test", rng.below(10_000)), "plan": "team"});
    }
    if name == "$feature_flag_called" {
        properties["$feature_flag"] = json!("new-onboarding");
        properties["$feature_flag_response"] = json!(rng.below(2) == 0);
    }
    json!({
        "distinct_id": distinct_id,
        "ip": ip,
        "site_url": format!("https://{host}"),
        "team_id": team,
        "now": iso(at + 150),
        "event": name,
        "sent_at": iso(at + 120),
        "timestamp": iso(at),
        "uuid": format!("0191f3a2-{:04x}-7{}-{}-{:012x}", (index >> 16) & 0xffff, rng.hex(3), rng.hex(4), index),
        "properties": properties,
    })
}

fn malformed(rng: &mut Rng, kind: BadKind, event: Value, huge_kb: usize) -> Vec<u8> {
    match kind {
        BadKind::Truncated => {
            let text = event.to_string().into_bytes();
            let cut = 1 + rng.below(text.len() as u64 - 2) as usize;
            let mut cut_at = cut;
            while cut_at > 1 && (text[cut_at] & 0xc0) == 0x80 {
                cut_at -= 1; // keep it valid UTF-8: the line is malformed JSON, not bad bytes
            }
            text[..cut_at].to_vec()
        }
        BadKind::NonObject => rng.pick(&["[1,2,3]", "\"an event\"", "42", "null", "true"]).as_bytes().to_vec(),
        BadKind::MissingEvent => {
            let mut e = event;
            e.as_object_mut().expect("an object").remove("event");
            e.to_string().into_bytes()
        }
        BadKind::HugeProperty => {
            let mut e = event;
            e["properties"]["$huge"] = json!("h".repeat(huge_kb * 1024));
            e.to_string().into_bytes()
        }
        BadKind::InvalidUtf8 => {
            let mut text = event.to_string().into_bytes();
            let at = text.windows(7).position(|w| w == b"\"title\"").map_or(text.len() / 2, |p| p + 9);
            text.insert(at, 0xff);
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_events_look_like_posthogs() {
        let opts = GenOptions { count: 500, seed: 7, ..GenOptions::default() };
        let a = generate(&opts);
        assert_eq!(a, generate(&opts));
        assert_ne!(a, generate(&GenOptions { seed: 8, ..opts.clone() }));
        let events: Vec<Value> = a.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(events.len(), 500);
        let mut uuids: Vec<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), 500, "uuids are unique");
        let team1 = events.iter().filter(|e| e["team_id"] == 1).count();
        assert!((200..=400).contains(&team1), "team 1 is the busiest: {team1}");
        assert!(events.iter().any(|e| e["event"] == "$autocapture" && e["properties"]["$elements"].is_array()));
        assert!(events.iter().any(|e| e["properties"]["$host"] == "localhost"), "some internal traffic");
        let mean = a.len() / 500;
        assert!((700..3000).contains(&mean), "about a kilobyte or two per event: {mean}");
    }

    #[test]
    fn bad_lines_replace_good_ones_at_the_rate_asked() {
        let opts = GenOptions { count: 2000, seed: 3, bad_rate: 0.1, huge_kb: 4, ..GenOptions::default() };
        let text = generate(&opts);
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2000);
        let bad = lines
            .iter()
            .filter(|l| {
                std::str::from_utf8(l)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(t).ok())
                    .is_none_or(|v| !v.is_object() || v.get("event").is_none() || v["properties"].get("$huge").is_some())
            })
            .count();
        assert!((120..=280).contains(&bad), "about 10% malformed: {bad}");
        assert!(lines.iter().any(|l| std::str::from_utf8(l).is_err()), "some invalid UTF-8");
    }
}
