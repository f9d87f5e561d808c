//! `geoip.locate`: MaxMind City lookups, shaped as `@maxmind/geoip2-node` returned them.
//!
//! PostHog's plugins received the GeoIP2 City model with camelCase keys
//! (`geonameId`, `isoCode`, `timeZone`, `registeredCountry`, ...) and a `traits` object.
//! We decode the database record generically and rename keys, so every field the database
//! holds reaches the plugin.

use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Addresses kept per generation of the lookup cache (two generations: at most twice this).
const CACHE_GENERATION: usize = 4096;

/// An open MaxMind database, shared by all workers of a process, with a cache of recent
/// lookups (a City lookup decodes a record of some hundred fields; the same visitors come back).
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
    recent: Mutex<Recent>,
}

/// The answers for recently looked-up addresses, in two generations: a hit in the older one is
/// moved to the newer; when the newer is full, the older is dropped. Least recently used
/// addresses leave first, at O(1) per lookup.
#[derive(Default)]
struct Recent {
    new: HashMap<IpAddr, Result<String, String>>,
    old: HashMap<IpAddr, Result<String, String>>,
}

impl Recent {
    fn get(&mut self, addr: &IpAddr) -> Option<Result<String, String>> {
        if let Some(hit) = self.new.get(addr) {
            return Some(hit.clone());
        }
        let hit = self.old.remove(addr)?;
        self.put(*addr, hit.clone());
        Some(hit)
    }

    fn put(&mut self, addr: IpAddr, answer: Result<String, String>) {
        if self.new.len() >= CACHE_GENERATION {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(addr, answer);
    }
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").field("database_type", &self.reader.metadata().database_type).finish()
    }
}

impl GeoIp {
    /// Opens a `.mmdb` file.
    pub fn open(path: &Path) -> Result<Self, String> {
        maxminddb::Reader::open_readfile(path)
            .map(|reader| Self { reader, recent: Mutex::new(Recent::default()) })
            .map_err(|e| format!("cannot open geoip database {}: {e}", path.display()))
    }

    /// The City record of `ip`, or an error for an invalid or unknown address (PostHog's
    /// 2022 server rejected the promise in both cases).
    pub fn locate(&self, ip: &str) -> Result<Value, String> {
        let addr: IpAddr = ip.trim().parse().map_err(|_| format!("'{ip}' is not a valid IP address"))?;
        let found = self.reader.lookup(addr).map_err(|e| e.to_string())?;
        let network = found.network().map(|n| n.to_string()).ok();
        let record: Option<Value> = found.decode().map_err(|e| e.to_string())?;
        let Some(Value::Object(record)) = record else {
            return Err(format!("The address {ip} is not in the database."));
        };
        let mut out = camel_case_keys(record);
        let traits = out.entry("traits").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(t) = traits {
            t.insert("ipAddress".into(), Value::String(addr.to_string()));
            if let Some(n) = network {
                t.insert("network".into(), Value::String(n));
            }
        }
        Ok(Value::Object(out))
    }

    /// [`GeoIp::locate`] as JSON text, from the cache of recent lookups when it holds `ip`.
    pub fn locate_json(&self, ip: &str) -> Result<String, String> {
        let Ok(addr) = ip.trim().parse::<IpAddr>() else {
            return self.locate(ip).map(|v| v.to_string());
        };
        if let Some(answer) = lock(&self.recent).get(&addr) {
            return answer;
        }
        let answer = self.locate(ip).map(|v| v.to_string());
        lock(&self.recent).put(addr, answer.clone());
        answer
    }
}

fn camel_case_keys(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| {
            // `names` maps locale codes to names: its keys stay as they are.
            let v = if k == "names" { v } else { camel_case_value(v) };
            (camel(&k), v)
        })
        .collect()
}

fn camel_case_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(camel_case_keys(m)),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_value).collect()),
        other => other,
    }
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_cache_drops_the_least_recently_used_first() {
        let mut r = Recent::default();
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(n));
        for n in 0..CACHE_GENERATION as u32 {
            r.put(ip(n), Ok(n.to_string()));
        }
        // Address 0 is used again, then a new generation starts: 0 moves along, 1 does not.
        assert_eq!(r.get(&ip(0)), Some(Ok("0".into())));
        r.put(ip(1_000_000), Err("not found".into()));
        for n in 2_000_000..2_000_000 + CACHE_GENERATION as u32 {
            r.put(ip(n), Ok(String::new()));
        }
        assert_eq!(r.get(&ip(0)), None, "two generations later even a reused address is gone");
        let mut r = Recent::default();
        for n in 0..CACHE_GENERATION as u32 + 1 {
            r.put(ip(n), Ok(n.to_string()));
        }
        assert_eq!(r.get(&ip(5)), Some(Ok("5".into())), "the older generation still answers");
        assert!(r.new.contains_key(&ip(5)), "and the hit moves to the newer one");
    }

    #[test]
    fn keys_become_camel_case_except_names() {
        let v: Value = serde_json::json!({"registered_country": {"iso_code": "US", "names": {"pt-BR": "x", "zh_CN": "y"}}});
        let Value::Object(m) = v else { unreachable!() };
        let out = Value::Object(camel_case_keys(m));
        assert_eq!(out["registeredCountry"]["isoCode"], "US");
        assert_eq!(out["registeredCountry"]["names"]["zh_CN"], "y");
    }
}
